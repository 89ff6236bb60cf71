/**
 * Training data: tokenised corpora and packed (varlen, unpadded) batches.
 *
 * - `loadCorpus(paths, tokenizer)` reads `.txt` files (one document per file) and `.jsonl` files (one document per
 *   non-blank line, an object with a string "text"), directories expanded recursively in sorted order; tokenises each
 *   document without special-token parsing and appends the end-of-text token. The result is cached in a binary file
 *   keyed by the files' contents and the tokenizer, so a second run does not re-tokenise.
 * - `splitDocuments(corpus, {validationFraction, seed})` splits by document.
 * - `BatchLoader` cuts documents longer than `maxSeqLen` into pieces (each piece is its own document for attention:
 *   positions restart, lightning state restarts), shuffles the pieces per epoch (Fisher–Yates, seeded PRNG), and packs
 *   them greedily into batches of at most `tokensPerBatch` tokens; no piece crosses a batch. Targets are the next
 *   token of the original document (also at a piece's last token when the document continues), −1 at the document's
 *   last token (its end-of-text). The loader is resumable from `state()` (`{epoch, cursor}` + a fingerprint).
 */

import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError, UnsupportedError } from '../util/errors.js';

// ---------------------------------------------------------------------------------------------------------------
// Types

/** What loading needs from a tokenizer (the project's `Tokenizer` satisfies it). */
export interface CorpusTokenizer {
  readonly vocabSize: number;
  readonly eosToken?: string | undefined;
  encode(text: string, options?: { parseSpecialTokens?: boolean }): number[];
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
}

/** A tokenised corpus: documents (each ending with `eotId`) concatenated. */
export interface Corpus {
  /** All tokens, document after document. */
  readonly tokens: Int32Array;
  /** [documentCount + 1]: document d is tokens[offsets[d], offsets[d+1]). */
  readonly offsets: Int32Array;
  readonly documentCount: number;
  readonly eotId: number;
  /** Cache key: a hash of the inputs (file contents, tokenizer, end-of-text token). */
  readonly key: string;
}

/** A subset of a corpus's documents (ascending indices). */
export interface DocumentSet {
  readonly corpus: Corpus;
  readonly documents: Int32Array;
  readonly tokenCount: number;
}

export interface LoadCorpusOptions {
  /** Folder for the tokenised-corpus cache; no caching when undefined. */
  cacheDir?: string;
  /** Exact tokenizer identity for the cache key (e.g. `hashFiles` of tokenizer.json); default: a vocabulary fingerprint. */
  tokenizerHash?: string;
  /** End-of-text token appended to each document. Default: the tokenizer's eos token, else "<|endoftext|>". */
  eotToken?: string;
  /** Called after each file with (files done, files total, documents so far). */
  onProgress?: (filesDone: number, filesTotal: number, documents: number) => void;
}

export interface Batch {
  /** [T] token ids, T ≤ tokensPerBatch. */
  readonly ids: Int32Array;
  /** [T] next token within the document, −1 at each document's last token. */
  readonly targets: Int32Array;
  /** [T] position within the piece, restarting at 0 at every piece. */
  readonly positions: Int32Array;
  /** [count + 1] piece boundaries: offsets[0] = 0, offsets[count] = T. */
  readonly offsets: Int32Array;
  /** Pieces in the batch. */
  readonly count: number;
  /** The longest piece, in tokens. */
  readonly maxLength: number;
  /** Number of targets ≥ 0 (for loss normalisation). */
  readonly targetCount: number;
  /** The epoch these pieces belong to (a batch never mixes epochs). */
  readonly epoch: number;
}

export interface BatchLoaderOptions {
  /** Token budget of one batch (T ≤ this). */
  tokensPerBatch: number;
  /** Longest piece; longer documents are cut. Must be ≤ tokensPerBatch. */
  maxSeqLen: number;
  /** Shuffle seed (a non-negative safe integer). Default 0. */
  seed?: number;
  /** Shuffle the pieces each epoch. Default true; false keeps document order (for evaluation). */
  shuffle?: boolean;
}

/** Serialisable loader position. */
export interface BatchLoaderState {
  readonly version: 1;
  readonly epoch: number;
  /** Pieces of this epoch's order already served. */
  readonly cursor: number;
  /** Identifies the corpus, document set and options the state belongs to. */
  readonly fingerprint: string;
}

// ---------------------------------------------------------------------------------------------------------------
// PRNG (splitmix32 steps) and seeded shuffles

function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let t = x ^ (x >>> 16);
  t = Math.imul(t, 0x21f0aaad);
  t ^= t >>> 15;
  t = Math.imul(t, 0x735a2d97);
  return (t ^ (t >>> 15)) >>> 0;
}

/** A deterministic PRNG: uniform floats in [0, 1) from a list of integer seeds. */
export function seededRandom(...seeds: number[]): () => number {
  let state = 0x2545f491;
  for (const s of seeds) {
    const lo = s >>> 0;
    const hi = Math.floor(s / 4294967296) >>> 0;
    state = mix32(state ^ lo);
    state = mix32(state ^ hi);
  }
  return () => {
    state = (state + 0x9e3779b9) | 0;
    let t = state ^ (state >>> 16);
    t = Math.imul(t, 0x21f0aaad);
    t ^= t >>> 15;
    t = Math.imul(t, 0x735a2d97);
    return ((t ^ (t >>> 15)) >>> 0) / 4294967296;
  };
}

/** Fisher–Yates in place. */
export function shuffleInPlace(a: Int32Array, random: () => number): Int32Array {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}

function checkSeed(seed: unknown, param: string): number {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0) {
    throw new InvalidArgumentError(`${param} must be a non-negative safe integer, got ${String(seed)}`, { param });
  }
  return seed;
}

// ---------------------------------------------------------------------------------------------------------------
// Corpus construction and loading

/** A corpus from already-tokenised documents; `eotId` is appended to each. */
export function corpusFromDocuments(documents: readonly (readonly number[] | Int32Array)[], eotId: number, key = 'memory'): Corpus {
  if (!Number.isInteger(eotId) || eotId < 0) throw new InvalidArgumentError(`eotId must be a non-negative integer, got ${eotId}`, { param: 'eotId' });
  let total = 0;
  for (const d of documents) total += d.length + 1;
  if (total > 0x7fffffff) throw new UnsupportedError(`the corpus has ${total} tokens; at most 2^31 − 1 are supported`);
  const tokens = new Int32Array(total);
  const offsets = new Int32Array(documents.length + 1);
  let at = 0;
  documents.forEach((d, i) => {
    tokens.set(d, at);
    at += d.length;
    tokens[at++] = eotId;
    offsets[i + 1] = at;
  });
  return { tokens, offsets, documentCount: documents.length, eotId, key };
}

/** sha256 (hex) over the named files' contents, in order. */
export async function hashFiles(files: readonly string[]): Promise<string> {
  const h = crypto.createHash('sha256');
  for (const f of files) {
    h.update(await fs.readFile(f));
    h.update('\0');
  }
  return h.digest('hex');
}

/** A fingerprint of a tokenizer's behaviour: its vocabulary and the encoding of a probe text. */
export function tokenizerFingerprint(tokenizer: CorpusTokenizer): string {
  const h = crypto.createHash('sha256');
  h.update(`vocab ${tokenizer.vocabSize}\n`);
  for (let i = 0; i < tokenizer.vocabSize; i++) h.update(`${tokenizer.idToToken(i) ?? ''}\u0000`);
  const probe =
    "The quick brown fox jumps over the lazy dog; it's 1234.5 — “Ünïcödé” 😀\n\n  indented\ttabs <|endoftext|> ok?";
  h.update(tokenizer.encode(probe, { parseSpecialTokens: false }).join(','));
  return h.digest('hex');
}

async function expandPaths(paths: readonly string[]): Promise<string[]> {
  if (!Array.isArray(paths) || paths.length === 0) {
    throw new InvalidArgumentError('paths must be a non-empty list of .txt / .jsonl files or folders', { param: 'paths' });
  }
  const out: string[] = [];
  const visit = async (p: string, top: boolean): Promise<void> => {
    let st;
    try {
      st = await fs.stat(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new InvalidArgumentError(code === 'ENOENT' ? `${p} not found` : `cannot read ${p}: ${(e as Error).message}`, {
        param: 'paths',
        cause: e,
      });
    }
    if (st.isDirectory()) {
      const entries = (await fs.readdir(p)).sort();
      for (const e of entries) await visit(path.join(p, e), false);
      return;
    }
    if (p.endsWith('.txt') || p.endsWith('.jsonl')) out.push(p);
    else if (top) throw new InvalidArgumentError(`${p}: expected a .txt or .jsonl file`, { param: 'paths' });
  };
  for (const p of paths) {
    if (typeof p !== 'string' || p === '') throw new InvalidArgumentError('paths must be non-empty strings', { param: 'paths' });
    await visit(p, true);
  }
  if (out.length === 0) throw new InvalidArgumentError(`no .txt or .jsonl files in ${paths.join(', ')}`, { param: 'paths' });
  return out;
}

/** Documents of one file, as strings. Errors name the file and (for JSONL) the 1-based line. */
function documentsOf(file: string, content: string): string[] {
  if (file.endsWith('.txt')) return content.length === 0 ? [] : [content];
  const docs: string[] = [];
  const lines = content.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].endsWith('\r') ? lines[i].slice(0, -1) : lines[i];
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new InvalidArgumentError(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`, { param: 'paths', cause: e });
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value) || typeof (value as { text?: unknown }).text !== 'string') {
      throw new InvalidArgumentError(`${file}:${i + 1}: expected a JSON object with a string "text" field`, { param: 'paths' });
    }
    const text = (value as { text: string }).text;
    if (text.length > 0) docs.push(text);
  }
  return docs;
}

/** Longest piece of text handed to the tokenizer at once (documents are cut at a single space between words). */
const ENCODE_CHUNK = 1 << 20;

function encodeLong(tokenizer: CorpusTokenizer, text: string): number[] {
  if (text.length <= ENCODE_CHUNK) return tokenizer.encode(text, { parseSpecialTokens: false });
  const out: number[] = [];
  let from = 0;
  while (from < text.length) {
    let to = Math.min(text.length, from + ENCODE_CHUNK);
    if (to < text.length) {
      // Cut before a lone space that starts a word: the GPT-2 pre-tokenizer never joins across it, so the ids match
      // those of encoding the whole text. Fall back to a hard cut when there is none.
      let cut = to;
      while (cut > from + ENCODE_CHUNK / 2 && !(text[cut] === ' ' && /\S/.test(text[cut - 1]) && /[^\s]/.test(text[cut + 1] ?? ' '))) cut--;
      if (cut > from + ENCODE_CHUNK / 2) to = cut;
      else if (/[\uD800-\uDBFF]/.test(text[to - 1])) to--; // keep a surrogate pair together
    }
    for (const id of tokenizer.encode(text.slice(from, to), { parseSpecialTokens: false })) out.push(id);
    from = to;
  }
  return out;
}

const CACHE_MAGIC = 'LMOECRP1';

function cacheFile(dir: string, key: string): string {
  return path.join(dir, `corpus-${key.slice(0, 32)}.bin`);
}

async function readCache(file: string, key: string): Promise<Corpus | undefined> {
  let buf: Buffer;
  try {
    buf = await fs.readFile(file);
  } catch {
    return undefined;
  }
  if (buf.length < 32 || buf.toString('latin1', 0, 8) !== CACHE_MAGIC) return undefined;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const keyLength = dv.getUint32(8, true);
  const documentCount = dv.getUint32(12, true);
  const tokenCount = dv.getUint32(16, true);
  const eotId = dv.getUint32(20, true);
  const headerEnd = 24 + Math.ceil(keyLength / 4) * 4;
  if (headerEnd > buf.length || buf.toString('utf8', 24, 24 + keyLength) !== key) return undefined;
  if (buf.length !== headerEnd + 4 * (documentCount + 1 + tokenCount)) return undefined;
  const aligned = new Uint8Array(buf.length - headerEnd);
  aligned.set(buf.subarray(headerEnd));
  const offsets = new Int32Array(aligned.buffer, 0, documentCount + 1);
  const tokens = new Int32Array(aligned.buffer, 4 * (documentCount + 1), tokenCount);
  if (offsets[0] !== 0 || offsets[documentCount] !== tokenCount) return undefined;
  return { tokens, offsets, documentCount, eotId, key };
}

async function writeCache(file: string, corpus: Corpus): Promise<void> {
  const keyBytes = Buffer.from(corpus.key, 'utf8');
  const headerEnd = 24 + Math.ceil(keyBytes.length / 4) * 4;
  const header = Buffer.alloc(headerEnd);
  header.write(CACHE_MAGIC, 0, 'latin1');
  header.writeUInt32LE(keyBytes.length, 8);
  header.writeUInt32LE(corpus.documentCount, 12);
  header.writeUInt32LE(corpus.tokens.length, 16);
  header.writeUInt32LE(corpus.eotId, 20);
  keyBytes.copy(header, 24);
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'w');
  try {
    await fh.write(header);
    await fh.write(new Uint8Array(corpus.offsets.buffer, corpus.offsets.byteOffset, corpus.offsets.byteLength));
    await fh.write(new Uint8Array(corpus.tokens.buffer, corpus.tokens.byteOffset, corpus.tokens.byteLength));
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}

/**
 * Loads and tokenises `.txt` / `.jsonl` files (or folders of them). With `cacheDir`, the tokenised corpus is read from
 * / written to `cacheDir/corpus-<key>.bin`.
 */
export async function loadCorpus(paths: readonly string[], tokenizer: CorpusTokenizer, options: LoadCorpusOptions = {}): Promise<Corpus> {
  const files = await expandPaths(paths);
  const eotToken = options.eotToken ?? tokenizer.eosToken ?? '<|endoftext|>';
  const eotId = tokenizer.tokenToId(eotToken);
  if (eotId === undefined) {
    throw new InvalidArgumentError(`the tokenizer has no end-of-text token ${JSON.stringify(eotToken)}`, { param: 'eotToken' });
  }

  const contents: Buffer[] = [];
  const h = crypto.createHash('sha256');
  h.update(`lightning-moe corpus v1\0eot ${eotToken} ${eotId}\0tokenizer ${options.tokenizerHash ?? tokenizerFingerprint(tokenizer)}\0`);
  for (const f of files) {
    let buf: Buffer;
    try {
      buf = await fs.readFile(f);
    } catch (e) {
      throw new InvalidArgumentError(`cannot read ${f}: ${(e as Error).message}`, { param: 'paths', cause: e });
    }
    contents.push(buf);
    h.update(`${path.extname(f)}\0${buf.length}\0`);
    h.update(buf);
  }
  const key = h.digest('hex');

  const cacheable = options.cacheDir !== undefined && os.endianness() === 'LE';
  if (cacheable) {
    const cached = await readCache(cacheFile(options.cacheDir!, key), key);
    if (cached !== undefined) return cached;
  }

  // Parse every file first so that bad input fails before the (slow) tokenisation.
  const texts: string[][] = files.map((f, i) => documentsOf(f, contents[i].toString('utf8')));
  const docs: number[][] = [];
  texts.forEach((list, i) => {
    for (const t of list) docs.push(encodeLong(tokenizer, t));
    options.onProgress?.(i + 1, files.length, docs.length);
  });
  if (docs.length === 0) throw new InvalidArgumentError(`no documents in ${files.join(', ')}`, { param: 'paths' });
  const corpus = corpusFromDocuments(docs, eotId, key);
  if (cacheable) await writeCache(cacheFile(options.cacheDir!, key), corpus);
  return corpus;
}

// ---------------------------------------------------------------------------------------------------------------
// Document sets

export function allDocuments(corpus: Corpus): DocumentSet {
  const documents = new Int32Array(corpus.documentCount);
  for (let i = 0; i < documents.length; i++) documents[i] = i;
  return { corpus, documents, tokenCount: corpus.tokens.length };
}

function documentSet(corpus: Corpus, documents: Int32Array): DocumentSet {
  documents.sort();
  let tokenCount = 0;
  for (const d of documents) tokenCount += corpus.offsets[d + 1] - corpus.offsets[d];
  return { corpus, documents, tokenCount };
}

/**
 * Splits documents into train and validation sets at random (seeded). The validation set gets
 * round(fraction · count) documents, at least 1 when fraction > 0, and the train set keeps at least 1.
 */
export function splitDocuments(corpus: Corpus, options: { validationFraction: number; seed?: number }): { train: DocumentSet; validation: DocumentSet } {
  const f = options.validationFraction;
  if (typeof f !== 'number' || !(f >= 0 && f < 1)) {
    throw new InvalidArgumentError(`validationFraction must be in [0, 1), got ${String(f)}`, { param: 'validationFraction' });
  }
  const seed = checkSeed(options.seed ?? 0, 'seed');
  const n = corpus.documentCount;
  let nVal = Math.round(f * n);
  if (f > 0) nVal = Math.max(1, nVal);
  if (nVal > n - 1) {
    throw new InvalidArgumentError(`cannot split ${n} document(s) into non-empty train and validation sets`, { param: 'validationFraction' });
  }
  const order = allDocuments(corpus).documents;
  shuffleInPlace(order, seededRandom(seed, 0x5eed5917));
  return {
    validation: documentSet(corpus, order.slice(0, nVal)),
    train: documentSet(corpus, order.slice(nVal)),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Batches

function checkLoaderOptions(options: BatchLoaderOptions): Required<BatchLoaderOptions> {
  const { tokensPerBatch, maxSeqLen } = options;
  if (!Number.isInteger(tokensPerBatch) || tokensPerBatch < 1 || tokensPerBatch > 0x7fffffff) {
    throw new InvalidArgumentError(`tokensPerBatch must be a positive integer, got ${String(tokensPerBatch)}`, { param: 'tokensPerBatch' });
  }
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 1 || maxSeqLen > tokensPerBatch) {
    throw new InvalidArgumentError(`maxSeqLen must be an integer in [1, tokensPerBatch = ${tokensPerBatch}], got ${String(maxSeqLen)}`, {
      param: 'maxSeqLen',
    });
  }
  return { tokensPerBatch, maxSeqLen, seed: checkSeed(options.seed ?? 0, 'seed'), shuffle: options.shuffle ?? true };
}

export class BatchLoader {
  readonly set: DocumentSet;
  readonly options: Readonly<Required<BatchLoaderOptions>>;
  /** Pieces (documents cut at maxSeqLen) per epoch. */
  readonly pieceCount: number;
  /** Tokens per epoch. */
  readonly tokenCount: number;
  readonly fingerprint: string;

  /** Piece p is tokens[start[p], start[p] + length[p]) of a document ending at docEnd[p]. */
  readonly #start: Int32Array;
  readonly #length: Int32Array;
  readonly #docEnd: Int32Array;
  #epoch = 0;
  #cursor = 0;
  #orderEpoch = -1;
  #order: Int32Array;

  constructor(source: Corpus | DocumentSet, options: BatchLoaderOptions) {
    this.set = 'documents' in source ? source : allDocuments(source);
    this.options = Object.freeze(checkLoaderOptions(options));
    const { corpus, documents } = this.set;
    if (documents.length === 0) throw new InvalidArgumentError('the document set is empty', { param: 'source' });
    const L = this.options.maxSeqLen;

    let pieces = 0;
    for (const d of documents) pieces += Math.ceil((corpus.offsets[d + 1] - corpus.offsets[d]) / L);
    this.#start = new Int32Array(pieces);
    this.#length = new Int32Array(pieces);
    this.#docEnd = new Int32Array(pieces);
    let p = 0;
    let tokens = 0;
    for (const d of documents) {
      const end = corpus.offsets[d + 1];
      for (let s = corpus.offsets[d]; s < end; s += L) {
        this.#start[p] = s;
        this.#length[p] = Math.min(L, end - s);
        this.#docEnd[p] = end;
        p++;
      }
      tokens += end - corpus.offsets[d];
    }
    this.pieceCount = pieces;
    this.tokenCount = tokens;
    this.#order = new Int32Array(pieces);

    const h = crypto.createHash('sha256');
    h.update(`${corpus.key}\0${this.options.tokensPerBatch}\0${L}\0${this.options.seed}\0${this.options.shuffle}\0`);
    h.update(new Uint8Array(documents.buffer, documents.byteOffset, documents.byteLength));
    this.fingerprint = h.digest('hex').slice(0, 32);
  }

  /** A loader positioned at `state` (which must come from a loader over the same documents with the same options). */
  static fromState(source: Corpus | DocumentSet, options: BatchLoaderOptions, state: BatchLoaderState): BatchLoader {
    const loader = new BatchLoader(source, options);
    loader.restore(state);
    return loader;
  }

  get epoch(): number {
    return this.#epoch;
  }

  state(): BatchLoaderState {
    return { version: 1, epoch: this.#epoch, cursor: this.#cursor, fingerprint: this.fingerprint };
  }

  restore(state: BatchLoaderState): void {
    if (state === null || typeof state !== 'object') throw new InvalidArgumentError('state must be an object', { param: 'state' });
    if (state.version !== 1) throw new InvalidArgumentError(`state.version must be 1, got ${String(state.version)}`, { param: 'state' });
    if (state.fingerprint !== this.fingerprint) {
      throw new InvalidArgumentError('state belongs to a different corpus, document set or loader options', { param: 'state' });
    }
    if (!Number.isSafeInteger(state.epoch) || state.epoch < 0) {
      throw new InvalidArgumentError(`state.epoch must be a non-negative integer, got ${String(state.epoch)}`, { param: 'state' });
    }
    if (!Number.isInteger(state.cursor) || state.cursor < 0 || state.cursor > this.pieceCount) {
      throw new InvalidArgumentError(`state.cursor must be an integer in [0, ${this.pieceCount}], got ${String(state.cursor)}`, { param: 'state' });
    }
    this.#epoch = state.epoch;
    this.#cursor = state.cursor;
  }

  /** Piece order of `epoch` (identity without shuffle). */
  #orderOf(epoch: number): Int32Array {
    if (this.#orderEpoch !== epoch) {
      const order = this.#order;
      for (let i = 0; i < order.length; i++) order[i] = i;
      if (this.options.shuffle) shuffleInPlace(order, seededRandom(this.options.seed, epoch, 0xba7c4e5));
      this.#orderEpoch = epoch;
    }
    return this.#order;
  }

  /** The next batch; after the last batch of an epoch comes the first of the next (reshuffled) epoch. */
  next(): Batch {
    if (this.#cursor >= this.pieceCount) {
      this.#epoch++;
      this.#cursor = 0;
    }
    const order = this.#orderOf(this.#epoch);
    const budget = this.options.tokensPerBatch;
    let end = this.#cursor;
    let total = 0;
    while (end < this.pieceCount && total + this.#length[order[end]] <= budget) total += this.#length[order[end++]];

    const count = end - this.#cursor;
    const tokens = this.set.corpus.tokens;
    const ids = new Int32Array(total);
    const targets = new Int32Array(total);
    const positions = new Int32Array(total);
    const offsets = new Int32Array(count + 1);
    let t = 0;
    let maxLength = 0;
    let targetCount = 0;
    for (let k = 0; k < count; k++) {
      const p = order[this.#cursor + k];
      const s = this.#start[p];
      const n = this.#length[p];
      const docEnd = this.#docEnd[p];
      ids.set(tokens.subarray(s, s + n), t);
      for (let i = 0; i < n; i++) {
        positions[t + i] = i;
        const g = s + i + 1;
        targets[t + i] = g < docEnd ? tokens[g] : -1;
      }
      targetCount += s + n < docEnd ? n : n - 1;
      t += n;
      offsets[k + 1] = t;
      if (n > maxLength) maxLength = n;
    }
    const batch: Batch = { ids, targets, positions, offsets, count, maxLength, targetCount, epoch: this.#epoch };
    this.#cursor = end;
    return batch;
  }
}

/** The batches of one pass over `source` in document order (no shuffle), e.g. for validation. */
export function* evaluationBatches(source: Corpus | DocumentSet, options: Omit<BatchLoaderOptions, 'seed' | 'shuffle'>): Generator<Batch> {
  const loader = new BatchLoader(source, { ...options, shuffle: false });
  while (true) {
    const s = loader.state();
    if (s.cursor >= loader.pieceCount) return;
    yield loader.next();
  }
}
