/**
 * The safetensors container: an 8-byte little-endian header length N, N bytes of JSON
 * ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}),
 * then the raw little-endian tensor bytes, offsets relative to the start of that data.
 */
import { FormatError } from '../errors.js';
import { BYTES_PER_ELEMENT, type DType, type StorageOf, allocStorage } from '../tensor/dtype.js';
import { HostTensor, numel } from '../tensor/host-tensor.js';

const DTYPE_NAMES: Readonly<Record<DType, string>> = { f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32', u8: 'U8' };
const NAME_TO_DTYPE = new Map<string, DType>(Object.entries(DTYPE_NAMES).map(([k, v]) => [v, k as DType]));

export interface SafetensorsFile {
  readonly tensors: ReadonlyMap<string, HostTensor>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Little-endian hosts only (x86-64, arm64): typed arrays are then already in file order. */
function assertLittleEndian(): void {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('safetensors: big-endian hosts are not supported');
}

export function encodeSafetensors(tensors: ReadonlyArray<[string, HostTensor]>, metadata: Record<string, string> = {}): Uint8Array {
  assertLittleEndian();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    const bytes = t.data.byteLength;
    header[name] = { dtype: DTYPE_NAMES[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8; // keep the data 8-byte aligned
  json += ' '.repeat(pad);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const [, t] of tensors) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function decodeSafetensors(bytes: Uint8Array, file = 'safetensors'): SafetensorsFile {
  assertLittleEndian();
  if (bytes.length < 8) throw new FormatError(file, 'length', 'at least 8 bytes', bytes.length);
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (n > bytes.length - 8 || n > 100_000_000) throw new FormatError(file, 'header length', `≤ ${bytes.length - 8}`, n);
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset + 8, n).toString('utf8'));
  } catch (e) {
    throw new FormatError(file, 'header', 'valid JSON', (e as Error).message);
  }
  if (!isRecord(header)) throw new FormatError(file, 'header', 'a JSON object', typeof header);
  const dataStart = 8 + n;
  const dataLen = bytes.length - dataStart;
  const tensors = new Map<string, HostTensor>();
  let metadata: Record<string, string> = {};
  const spans: Array<[number, number]> = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isRecord(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw new FormatError(file, '__metadata__', 'an object of strings', entry);
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    if (!isRecord(entry)) throw new FormatError(file, name, 'a tensor entry object', entry);
    const dtype = NAME_TO_DTYPE.get(String(entry.dtype));
    if (dtype === undefined) throw new FormatError(file, `${name}.dtype`, [...NAME_TO_DTYPE.keys()].join(' | '), entry.dtype);
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new FormatError(file, `${name}.shape`, 'an array of non-negative integers', shape);
    }
    const offs = entry.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d) && d >= 0) || offs[0] > offs[1] || offs[1] > dataLen) {
      throw new FormatError(file, `${name}.data_offsets`, `[begin, end] within ${dataLen} data bytes`, offs);
    }
    const count = numel(shape as number[]);
    const byteLen = count * BYTES_PER_ELEMENT[dtype];
    if (offs[1] - offs[0] !== byteLen) {
      throw new FormatError(file, `${name}.data_offsets`, `${byteLen} bytes for ${dtype} ${JSON.stringify(shape)}`, offs[1] - offs[0]);
    }
    const storage = allocStorage(dtype, count) as StorageOf[DType];
    new Uint8Array(storage.buffer).set(bytes.subarray(dataStart + offs[0], dataStart + offs[1]));
    tensors.set(name, new HostTensor(dtype, shape as number[], storage));
    spans.push([offs[0], offs[1]]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  let cursor = 0;
  for (const [b, e] of spans) {
    if (b !== cursor) throw new FormatError(file, 'data_offsets', 'contiguous tensors without holes or overlaps', `a span starting at ${b} after ${cursor}`);
    cursor = e;
  }
  if (cursor !== dataLen) throw new FormatError(file, 'data length', `${cursor} bytes`, dataLen);
  return { tensors, metadata };
}
