/**
 * A model directory's weights: one `model.safetensors`, or shards listed by `model.safetensors.index.json`.
 *
 * Implements SERVING.md §9 F10 (shard names are plain file names that stay inside the model directory, symlinks
 * included; each shard's header holds exactly the tensors the index maps to it; `metadata.total_size` matches)
 * and F8 on the read side (tensor bytes are streamed through positional reads of bounded size, never a whole-file
 * read). Headers are validated by `readSafetensorsHeader` (F1–F9).
 */

import { constants as bufferConstants } from 'node:buffer';
import { lstat, open, readFile, realpath, stat, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';

import { decodeToFloat32, HOST_LITTLE_ENDIAN, isFloatDType } from '../util/dtype.js';
import { DisposedError, InvalidArgumentError, WeightsError } from '../util/errors.js';
import {
  DTYPE_BYTES,
  oneLine,
  parseJsonChecked,
  quote,
  readSafetensorsHeader,
  type SafetensorsHeader,
  type TensorEntry,
} from './safetensors.js';

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

const MIB = 1024 * 1024;
const DEFAULT_CHUNK_BYTES = 64 * MIB;
const MAX_CHUNK_BYTES = 1024 * MIB;
/** `read()` refuses tensors larger than this; stream them with `chunks()`. */
export const MAX_READ_BYTES = 2 * 1024 * MIB;
// A multiple of every element size, so float decoding never splits an element across chunks.
const DECODE_CHUNK_BYTES = 16 * MIB;
// An index is a name → file map; anything near this size is not one (and reading it whole must stay bounded).
const MAX_INDEX_BYTES = 100_000_000;
// Shard headers are read a few at a time so that a 400-shard checkpoint does not hold 400 descriptors at once.
const HEADER_CONCURRENCY = 16;

export class Checkpoint {
  /** Absolute path of the model directory. */
  readonly dir: string;
  /** All tensors of all shards, by name. */
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** Absolute paths of the shard files (one for a single-file checkpoint). */
  readonly files: readonly string[];

  #handles = new Map<string, Promise<FileHandle>>();
  #fileSizes: ReadonlyMap<string, number>;
  #closed = false;
  #closing: Promise<void> | undefined;

  private constructor(dir: string, headers: readonly SafetensorsHeader[]) {
    this.dir = dir;
    const tensors = new Map<string, TensorEntry>();
    const sizes = new Map<string, number>();
    for (const h of headers) {
      sizes.set(h.file, h.fileSize);
      for (const [name, entry] of h.tensors) tensors.set(name, entry);
    }
    this.tensors = tensors;
    this.files = Object.freeze(headers.map((h) => h.file));
    this.#fileSizes = sizes;
  }

  /** Opens the checkpoint in `dir`, validating every shard header (F1–F10). Reads no tensor data. */
  static async open(dir: string): Promise<Checkpoint> {
    const abs = path.resolve(dir);
    let st;
    try {
      st = await stat(abs);
    } catch (e) {
      throw new WeightsError(`model directory ${abs} cannot be read: ${errCode(e)}`, { file: abs, cause: e });
    }
    if (!st.isDirectory()) throw new WeightsError(`model directory ${abs} is not a directory`, { file: abs });
    const realDir = await realpath(abs);

    const indexPath = path.join(abs, INDEX_FILE);
    if (await exists(indexPath)) return new Checkpoint(abs, await openSharded(abs, realDir, indexPath));

    const single = path.join(abs, SINGLE_FILE);
    if (await exists(single)) {
      await checkInside(single, SINGLE_FILE, realDir, () => `${SINGLE_FILE} is missing`);
      return new Checkpoint(abs, [await readSafetensorsHeader(single)]);
    }
    // Never fall back to other *.safetensors files: a model dir may hold unrelated ones (test outputs, adapters).
    throw new WeightsError(`no ${SINGLE_FILE} or ${INDEX_FILE} in ${abs}`, { file: abs });
  }

  /** Opens one safetensors file on its own (optimizer state and other side files of a checkpoint). */
  static async openFile(file: string): Promise<Checkpoint> {
    const abs = path.resolve(file);
    return new Checkpoint(path.dirname(abs), [await readSafetensorsHeader(abs)]);
  }

  /** The entry of tensor `name`; throws `WeightsError` naming it when the checkpoint has no such tensor. */
  get(name: string): TensorEntry {
    const e = this.tensors.get(name);
    if (e === undefined) {
      throw new WeightsError(`no tensor ${quote(name)} in the checkpoint at ${this.dir}`, { file: this.dir, tensor: name });
    }
    return e;
  }

  /**
   * Streams a tensor's bytes in chunks of at most `chunkBytes` (default 64 MiB, max 1 GiB). Each chunk is a view of
   * a buffer reused across steps: it is valid until the next iteration step; copy it to keep it.
   */
  chunks(name: string, chunkBytes: number = DEFAULT_CHUNK_BYTES): AsyncIterable<Uint8Array> {
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1 || chunkBytes > MAX_CHUNK_BYTES) {
      throw new InvalidArgumentError(
        `chunkBytes: expected an integer from 1 to ${MAX_CHUNK_BYTES} (1 GiB), got ${String(chunkBytes)}`,
        { param: 'chunkBytes' },
      );
    }
    this.#ensureOpen();
    const entry = this.get(name);
    return this.#stream(entry, chunkBytes, 0, entry.byteLength);
  }

  /**
   * Like chunks(), for the bytes [from, from + length) of the tensor only (a rank of a sharded model reads just its
   * slice of a weight).
   */
  chunksInRange(name: string, from: number, length: number, chunkBytes: number = DEFAULT_CHUNK_BYTES): AsyncIterable<Uint8Array> {
    this.#ensureOpen();
    const entry = this.get(name);
    if (!(Number.isSafeInteger(from) && Number.isSafeInteger(length) && from >= 0 && length >= 0 && from + length <= entry.byteLength)) {
      throw new InvalidArgumentError(`byte range [${from}, ${from + length}) is outside tensor ${quote(name)} (${entry.byteLength} bytes)`, { param: 'range' });
    }
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1 || chunkBytes > MAX_CHUNK_BYTES) {
      throw new InvalidArgumentError(`chunkBytes: expected an integer from 1 to ${MAX_CHUNK_BYTES} (1 GiB), got ${String(chunkBytes)}`, { param: 'chunkBytes' });
    }
    return this.#stream(entry, chunkBytes, from, length);
  }

  async *#stream(entry: TensorEntry, chunkBytes: number, from: number, length: number): AsyncGenerator<Uint8Array, void, undefined> {
    if (length === 0) return;
    // Bounded by chunkBytes and by the tensor's length, which F7 has already matched against the real file size.
    const buf = new Uint8Array(Math.min(chunkBytes, length));
    for (let done = 0; done < length; ) {
      const len = Math.min(buf.length, length - done);
      const view = buf.subarray(0, len);
      await this.#readInto(entry, view, from + done);
      done += len;
      yield view;
    }
  }

  /** The whole tensor as a new Uint8Array. Refuses tensors over 2 GiB: stream those with `chunks()`. */
  async read(name: string): Promise<Uint8Array> {
    this.#ensureOpen();
    const entry = this.get(name);
    if (entry.byteLength > MAX_READ_BYTES) {
      throw new WeightsError(
        `${rel(this.dir, entry.file)}: tensor ${quote(name)} is ${entry.byteLength} bytes; read() returns at most ${MAX_READ_BYTES} (2 GiB): use chunks()`,
        { file: entry.file, tensor: name },
      );
    }
    const out = new Uint8Array(entry.byteLength);
    for (let done = 0; done < out.length; done += MAX_CHUNK_BYTES) {
      await this.#readInto(entry, out.subarray(done, Math.min(out.length, done + MAX_CHUNK_BYTES)), done);
    }
    return out;
  }

  /** Decodes an F32, BF16, F16 or F64 tensor into a new Float32Array, streaming its bytes in bounded chunks. */
  async readFloat32(name: string): Promise<Float32Array> {
    this.#ensureOpen();
    const entry = this.get(name);
    const dtype = entry.dtype;
    if (!isFloatDType(dtype)) {
      throw new WeightsError(
        `${rel(this.dir, entry.file)}: tensor ${quote(name)}: expected dtype F32, BF16, F16 or F64 for readFloat32, got ${entry.dtype}`,
        { file: entry.file, tensor: name },
      );
    }
    const elemBytes = DTYPE_BYTES[dtype];
    const count = entry.byteLength / elemBytes;
    if (count * 4 > bufferConstants.MAX_LENGTH) {
      throw new WeightsError(
        `${rel(this.dir, entry.file)}: tensor ${quote(name)} has ${count} elements; a Float32Array holds at most ${Math.floor(bufferConstants.MAX_LENGTH / 4)}`,
        { file: entry.file, tensor: name },
      );
    }
    const out = new Float32Array(count);
    if (dtype === 'F32' && HOST_LITTLE_ENDIAN) {
      // Same layout: read straight into the result, no staging buffer.
      const bytes = new Uint8Array(out.buffer);
      for (let done = 0; done < bytes.length; done += MAX_CHUNK_BYTES) {
        await this.#readInto(entry, bytes.subarray(done, Math.min(bytes.length, done + MAX_CHUNK_BYTES)), done);
      }
      return out;
    }
    let at = 0;
    for await (const chunk of this.#stream(entry, DECODE_CHUNK_BYTES, 0, entry.byteLength)) at += decodeToFloat32(chunk, dtype, out, at);
    return out;
  }

  /** Closes the file handles this checkpoint opened. Idempotent; reads after close throw `DisposedError`. */
  close(): Promise<void> {
    this.#closed = true;
    this.#closing ??= (async () => {
      const pending = [...this.#handles.values()];
      this.#handles.clear();
      const results = await Promise.allSettled(pending);
      await Promise.allSettled(results.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
    })();
    return this.#closing;
  }

  #ensureOpen(): void {
    if (this.#closed) throw new DisposedError('Checkpoint');
  }

  /** One handle per shard, opened on first use and checked against the size its header was validated with. */
  #handle(file: string): Promise<FileHandle> {
    let h = this.#handles.get(file);
    if (h === undefined) {
      h = (async () => {
        let fh: FileHandle;
        try {
          fh = await open(file, 'r');
        } catch (e) {
          throw new WeightsError(`${rel(this.dir, file)}: cannot open: ${errCode(e)}`, { file, cause: e });
        }
        const size = (await fh.stat()).size;
        const want = this.#fileSizes.get(file);
        if (size !== want) {
          await fh.close();
          throw new WeightsError(
            `${rel(this.dir, file)}: file changed since its header was read: expected ${want} bytes, got ${size}`,
            { file },
          );
        }
        return fh;
      })();
      // A failed open is not cached, so a later call retries (and reports) instead of replaying a stale rejection.
      h.catch(() => {
        if (this.#handles.get(file) === h) this.#handles.delete(file);
      });
      this.#handles.set(file, h);
    }
    return h;
  }

  /** Fills `dst` with the tensor's bytes starting `from` bytes into it; a short read is a truncated file. */
  async #readInto(entry: TensorEntry, dst: Uint8Array, from: number): Promise<void> {
    this.#ensureOpen();
    const fh = await this.#handle(entry.file);
    let done = 0;
    while (done < dst.length) {
      const pos = entry.offset + from + done;
      const { bytesRead } = await fh.read(dst, done, dst.length - done, pos);
      if (bytesRead === 0) {
        throw new WeightsError(
          `${rel(this.dir, entry.file)}: truncated: tensor ${quote(entry.name)} expected ${dst.length - done} more bytes at byte ${pos}, got 0`,
          { file: entry.file, tensor: entry.name },
        );
      }
      done += bytesRead;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Sharded checkpoints (F10)
// ---------------------------------------------------------------------------------------------------------------

async function openSharded(dir: string, realDir: string, indexPath: string): Promise<SafetensorsHeader[]> {
  const fail = (message: string, tensor?: string): WeightsError =>
    new WeightsError(`${INDEX_FILE}: ${message}`, tensor === undefined ? { file: indexPath } : { file: indexPath, tensor });

  await checkInside(indexPath, INDEX_FILE, realDir, () => `${INDEX_FILE} is missing`);
  const st = await stat(indexPath);
  if (st.size > MAX_INDEX_BYTES) throw fail(`too large: expected at most ${MAX_INDEX_BYTES} bytes, got ${st.size}`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(await readFile(indexPath));
  } catch (e) {
    throw fail(e instanceof TypeError ? 'not valid UTF-8' : `cannot read: ${errCode(e)}`);
  }
  const parsed = parseJsonChecked(text, { maxDepth: 64 });
  if (!parsed.ok) {
    const pr = parsed.problem;
    if (pr.kind === 'syntax') throw fail(`invalid JSON: ${oneLine(pr.message)}`);
    if (pr.kind === 'depth') throw fail('invalid: nests deeper than 64 levels');
    if (pr.kind === 'duplicate') {
      // A tensor listed twice could be mapped to two shards; JSON.parse would silently keep the last.
      const inMap = pr.path.length === 1 && pr.path[0] === 'weight_map';
      throw fail(inMap ? `tensor ${quote(pr.key)} is listed twice in weight_map` : `duplicate key ${quote(pr.key)}`,
        inMap ? pr.key : undefined);
    }
    throw fail('invalid JSON');
  }
  const root = parsed.value;
  if (!isPlainObject(root)) throw fail(`expected a JSON object, got ${kind(root)}`);
  if (!Object.hasOwn(root, 'weight_map')) throw fail('missing "weight_map"');
  const weightMap = root.weight_map;
  if (!isPlainObject(weightMap)) throw fail(`weight_map: expected an object, got ${kind(weightMap)}`);

  // shard file name → the tensors the index puts in it (insertion order: as listed).
  const byShard = new Map<string, Set<string>>();
  const shardOf = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') {
      throw fail(`weight_map[${quote(tensor)}]: expected a shard file name, got ${kind(shard)}`, tensor);
    }
    const bad = badShardName(shard);
    if (bad !== undefined) {
      throw fail(`weight_map[${quote(tensor)}]: expected a plain file name inside the model directory, got ${quote(shard)} (${bad})`, tensor);
    }
    shardOf.set(tensor, shard);
    let set = byShard.get(shard);
    if (set === undefined) byShard.set(shard, (set = new Set()));
    set.add(tensor);
  }
  if (byShard.size === 0) throw fail('weight_map is empty');

  let totalSize: number | undefined;
  if (Object.hasOwn(root, 'metadata') && root.metadata !== null) {
    const md = root.metadata;
    if (!isPlainObject(md)) throw fail(`metadata: expected an object, got ${kind(md)}`);
    if (Object.hasOwn(md, 'total_size')) {
      const ts = md.total_size;
      if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts < 0) {
        throw fail(`metadata.total_size: expected a non-negative integer, got ${kind(ts)}`);
      }
      totalSize = ts;
    }
  }

  const shardNames = [...byShard.keys()].sort();
  for (const shard of shardNames) {
    await checkInside(path.join(dir, shard), shard, realDir, () => `missing shard ${shard} (listed in ${INDEX_FILE})`);
  }
  const headers = await mapLimit(shardNames, HEADER_CONCURRENCY, (s) => readSafetensorsHeader(path.join(dir, s)));

  let sum = 0;
  for (let i = 0; i < shardNames.length; i++) {
    const shard = shardNames[i];
    const header = headers[i];
    const listed = byShard.get(shard) as Set<string>;
    for (const [name, entry] of header.tensors) {
      sum += entry.byteLength;
      const mapped = shardOf.get(name);
      if (mapped === undefined) {
        throw new WeightsError(`${shard}: tensor ${quote(name)} is not listed in ${INDEX_FILE}`, { file: header.file, tensor: name });
      }
      if (mapped !== shard) {
        throw new WeightsError(`${shard}: tensor ${quote(name)} is in ${shard}, but ${INDEX_FILE} maps it to ${mapped}`, {
          file: header.file,
          tensor: name,
        });
      }
    }
    for (const name of listed) {
      if (!header.tensors.has(name)) {
        throw new WeightsError(`${shard}: ${INDEX_FILE} maps tensor ${quote(name)} to ${shard}, but ${shard} does not contain it`, {
          file: header.file,
          tensor: name,
        });
      }
    }
  }
  if (totalSize !== undefined && totalSize !== sum) {
    throw fail(`metadata.total_size: expected ${sum} (the bytes of tensor data in the shards), got ${totalSize}`);
  }
  return headers;
}

/** Why `name` is not a plain file name in the model directory, or undefined when it is one. */
function badShardName(name: string): string | undefined {
  if (name === '') return 'empty';
  if (name.includes('/') || name.includes('\\')) return 'contains a path separator';
  if (name === '.' || name === '..') return 'a directory reference';
  if (name.includes('\0')) return 'contains a NUL byte';
  if (path.isAbsolute(name) || path.win32.isAbsolute(name)) return 'an absolute path';
  // "C:x" is relative to drive C's current directory on Windows: not a name inside the model directory there.
  if (/^[A-Za-z]:/.test(name)) return 'a Windows drive path';
  return undefined;
}

/**
 * Resolves symlinks and requires the real file to be a regular file inside the real model directory, so that a
 * link cannot pull in a file from elsewhere (F10).
 */
async function checkInside(file: string, shown: string, realDir: string, missing: () => string): Promise<void> {
  let real: string;
  try {
    real = await realpath(file);
  } catch (e) {
    const code = errCode(e);
    let message = `${shown}: cannot resolve: ${code}`;
    if (code === 'ENOENT') message = (await exists(file)) ? `${shown}: broken symlink (its target does not exist)` : missing();
    throw new WeightsError(message, { file, cause: e });
  }
  const relative = path.relative(realDir, real);
  if (relative === '' || relative === '..' || relative.startsWith(`..${path.sep}`) || path.isAbsolute(relative)) {
    throw new WeightsError(`${shown}: resolves to ${real}, outside the model directory ${realDir}`, { file });
  }
  const st = await stat(real);
  if (!st.isFile()) throw new WeightsError(`${shown}: not a regular file`, { file });
}

/** Whether anything (a file, a directory, a dangling symlink) has this name; what it is gets checked later. */
async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (e) {
    if (errCode(e) === 'ENOENT') return false;
    throw new WeightsError(`${path.basename(p)}: cannot read: ${errCode(e)}`, { file: p, cause: e });
  }
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return quote(v);
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

function errCode(e: unknown): string {
  if (e !== null && typeof e === 'object' && 'code' in e && typeof e.code === 'string') return e.code;
  return oneLine(e instanceof Error ? e.message : String(e));
}

/** A shard's name for messages: relative to the model directory. */
function rel(dir: string, file: string): string {
  return path.relative(dir, file) || path.basename(file);
}
