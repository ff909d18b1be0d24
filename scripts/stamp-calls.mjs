// Host-clock stamps around a method, for the diagnostics that split a step on the host clock
// (graph-step-split.mjs, stack-host-split.mjs).

/**
 * Wraps proto[name] so every call stamps the host clock on entry (at.t0) and return (at.t1) and
 * keeps its receiver (at.self); returns the original. The two clock reads sit inside the split.
 */
export function stampCalls(proto, name, at) {
  const original = proto[name];
  proto[name] = function (...args) {
    at.t0 = performance.now();
    const r = original.apply(this, args);
    at.t1 = performance.now();
    at.self = this;
    return r;
  };
  return original;
}
