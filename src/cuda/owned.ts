/**
 * The GPU resources an object owns (buffers, arenas, events, streams), released in reverse order of
 * acquisition: one list serves both a constructor that fails half-way and dispose(), so the two can
 * never disagree about what must be freed.
 */
export interface Disposable {
  dispose(): void;
}

export class Owned {
  private readonly items: Disposable[] = [];

  /** Take ownership of `item` and hand it back. */
  add<T extends Disposable>(item: T): T {
    this.items.push(item);
    return item;
  }

  /**
   * The dispose() of an object whose GPU work runs on `stream`: wait for that work, then dispose
   * `first` in order (caches and swappable scratch not on the list) and everything owned — also when the
   * wait throws (a faulted stream must not leak its memory).
   */
  disposeAfter(stream: { synchronize(): void }, ...first: (Disposable | undefined)[]): void {
    try {
      stream.synchronize();
    } finally {
      for (const item of [...first].reverse()) if (item !== undefined) this.items.push(item); // first[0] goes first
      this.dispose();
    }
  }

  /** Dispose everything, newest first; every item is disposed even if one throws (the first error is rethrown). */
  dispose(): void {
    let first: unknown;
    for (const item of this.items.splice(0).reverse()) {
      try {
        item.dispose();
      } catch (e) {
        first ??= e;
      }
    }
    if (first !== undefined) throw first;
  }
}
