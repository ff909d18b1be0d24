#!/usr/bin/env node
// Shows the race that copies.fromHost guards against (bench/NOTES.md, session 31): a pageable
// cuMemcpyHtoD returns before its DMA lands, on the legacy stream, which non-blocking streams do
// not wait for. Counts the trials in which the next copy on a non-blocking stream reads the old
// bytes: raw cuMemcpyHtoD on an idle GPU, the same with a 256 MB pinned copy keeping host-to-device
// DMA busy, and copies.fromHost with DMA busy (0 expected).
//   bash scripts/device-run.sh node scripts/pageable-copy-race.mjs
const app = `${process.cwd()}/${process.env.PQCACHE_APP ?? '.device/app'}/dist/src`;
const { CudaContext } = await import(`${app}/cuda/context.js`);
const { DeviceBuffer, PinnedBuffer, copies } = await import(`${app}/cuda/memory.js`);
const { Stream } = await import(`${app}/cuda/stream.js`);
const { check, driver } = await import(`${app}/cuda/driver.js`);

CudaContext.primary();
const stream = new Stream();
const busy = new Stream();
const bulkBytes = 256 << 20;
const bulkHost = new PinnedBuffer(bulkBytes);
const bulkDevice = new DeviceBuffer(bulkBytes);
const trials = 20;
for (const n of [16384, 262144]) {
  const dev = new DeviceBuffer(n * 4);
  const pin = new PinnedBuffer(n * 4);
  for (const mode of ['raw', 'raw, DMA busy', 'copies.fromHost, DMA busy']) {
    let stale = 0;
    for (let t = 0; t < trials; t++) {
      copies.fill32Async(dev, 0x7fc00000, n, stream); // NaN: old bytes cannot pass for the data
      stream.synchronize();
      if (mode.endsWith('busy')) bulkHost.copyToDeviceAsync(bulkDevice, bulkBytes, busy);
      const src = new Float32Array(n).map((_, i) => i + t);
      if (mode.startsWith('raw')) check('cuMemcpyHtoD_v2', driver().cuMemcpyHtoD_v2(dev.ptr, src, n * 4));
      else copies.fromHost(dev, src);
      pin.copyFromDeviceAsync(dev, n * 4, stream);
      stream.synchronize();
      const back = new Float32Array(pin.arrayBuffer, 0, n);
      if (back.some((v, i) => v !== src[i])) stale++;
      busy.synchronize();
    }
    console.log(`${n * 4} bytes, ${mode}: ${stale}/${trials} trials read old bytes`);
  }
  dev.dispose();
  pin.dispose();
}
for (const r of [bulkHost, bulkDevice, stream, busy]) r.dispose();
