/**
 * Byte-level BPE tokenizer training (GPT-2 style), written out as a HuggingFace tokenizer.json that
 * `src/tokenizer` loads.
 *
 * - Text is split at special-token strings (never merged across), then pre-tokenized with the GPT-2 regex that the
 *   ByteLevel pre-tokenizer of tokenizer.json applies at encode time (`use_regex: true`), so training sees exactly the
 *   pieces the encoder will see.
 * - Each piece's UTF-8 bytes are symbols 0..255; the vocabulary is the special tokens, the 256 bytes (as GPT-2's
 *   byte-to-unicode characters), then one token per merge.
 * - Merging works on the unique pieces with their counts. Pair counts are kept incrementally: merging (a, b) only
 *   rewrites the pieces that contain it (found through a pair → pieces index), and only pairs holding the new symbol
 *   can grow, so a lazy max-heap (stale entries are re-pushed with their current count when popped) finds the most
 *   frequent pair. Ties go to the smaller (a, b) id pair, so training is deterministic.
 */

import fs from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../util/errors.js';

/** GPT-2's pre-tokenizer pattern, as the ByteLevel pre-tokenizer applies it. */
export const PRETOKENIZE_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Default special tokens: the end-of-text token (used to end every training document) and chat markers. */
export const DEFAULT_SPECIAL_TOKENS: readonly string[] = [
  '<|endoftext|>',
  '<begin_of_document>',
  '<beginning_of_sentence>',
  '<end_of_sentence>',
];

/** The largest vocabulary the trainer builds (pair keys pack two ids into one safe integer). */
export const MAX_VOCAB_SIZE = 1 << 21;

/** GPT-2's reversible byte → printable character map: byteToUnicode()[b] is the character for byte b. */
export function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const keep = new Set(printable);
  const out = new Array<string>(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = String.fromCharCode(keep.has(b) ? b : 256 + next++);
  }
  return out;
}

export interface BpeTrainOptions {
  /** Total vocabulary: special tokens + 256 bytes + merges. */
  vocabSize: number;
  /** Added special tokens, ids 0..n-1 in this order. Default `DEFAULT_SPECIAL_TOKENS`. */
  specialTokens?: readonly string[];
  /** Pairs seen fewer times than this are never merged (training stops early). Default 2. */
  minFrequency?: number;
  /** Called every `progressEvery` merges (default 500) with the number of merges done. */
  onProgress?: (merges: number, vocab: number) => void;
  progressEvery?: number;
}

export interface BpeModel {
  /** id → token string (byte-level characters; special tokens as given). */
  readonly tokens: readonly string[];
  /** Merges in rank order, as byte-level token strings. */
  readonly merges: readonly (readonly [string, string])[];
  readonly specialTokens: readonly string[];
}

export interface BpeStats {
  uniqueWords: number;
  totalWords: number;
  merges: number;
  seconds: number;
}

function checkOptions(options: BpeTrainOptions): { specials: string[]; minFrequency: number } {
  const specials = [...(options.specialTokens ?? DEFAULT_SPECIAL_TOKENS)];
  const seen = new Set<string>();
  for (const s of specials) {
    if (typeof s !== 'string' || s.length === 0) {
      throw new InvalidArgumentError('specialTokens must be non-empty strings', { param: 'specialTokens' });
    }
    if (seen.has(s)) throw new InvalidArgumentError(`special token ${JSON.stringify(s)} is listed twice`, { param: 'specialTokens' });
    seen.add(s);
  }
  const v = options.vocabSize;
  if (!Number.isInteger(v) || v < specials.length + 256 || v > MAX_VOCAB_SIZE) {
    throw new InvalidArgumentError(
      `vocabSize must be an integer in [${specials.length + 256}, ${MAX_VOCAB_SIZE}] (special tokens + 256 bytes + merges), got ${String(v)}`,
      { param: 'vocabSize' },
    );
  }
  const minFrequency = options.minFrequency ?? 2;
  if (!Number.isInteger(minFrequency) || minFrequency < 1) {
    throw new InvalidArgumentError(`minFrequency must be a positive integer, got ${String(minFrequency)}`, { param: 'minFrequency' });
  }
  return { specials, minFrequency };
}

/** Max-heap of (count, key), ties to the smaller key; parallel arrays. */
class PairHeap {
  readonly #counts: number[] = [];
  readonly #keys: number[] = [];

  get size(): number {
    return this.#keys.length;
  }

  #above(i: number, j: number): boolean {
    const ci = this.#counts[i];
    const cj = this.#counts[j];
    return ci > cj || (ci === cj && this.#keys[i] < this.#keys[j]);
  }

  #swap(i: number, j: number): void {
    const c = this.#counts[i];
    this.#counts[i] = this.#counts[j];
    this.#counts[j] = c;
    const k = this.#keys[i];
    this.#keys[i] = this.#keys[j];
    this.#keys[j] = k;
  }

  push(count: number, key: number): void {
    this.#counts.push(count);
    this.#keys.push(key);
    let i = this.#keys.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#above(i, p)) break;
      this.#swap(i, p);
      i = p;
    }
  }

  /** Removes the top; returns [count, key]. */
  pop(): [number, number] {
    const top: [number, number] = [this.#counts[0], this.#keys[0]];
    const lastCount = this.#counts.pop()!;
    const lastKey = this.#keys.pop()!;
    const n = this.#keys.length;
    if (n > 0) {
      this.#counts[0] = lastCount;
      this.#keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < n && this.#above(l, m)) m = l;
        if (r < n && this.#above(r, m)) m = r;
        if (m === i) break;
        this.#swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

/**
 * Trains byte-level BPE. Feed text with `add` (any number of calls: word counting is streaming), then `train()`.
 */
export class BpeTrainer {
  readonly #options: BpeTrainOptions;
  readonly #specials: string[];
  readonly #minFrequency: number;
  readonly #wordCounts = new Map<string, number>();
  readonly #specialSplit: RegExp | undefined;
  #totalWords = 0;
  #stats: BpeStats | undefined;

  constructor(options: BpeTrainOptions) {
    const checked = checkOptions(options);
    this.#options = options;
    this.#specials = checked.specials;
    this.#minFrequency = checked.minFrequency;
    const escaped = [...this.#specials]
      .sort((a, b) => b.length - a.length)
      .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.#specialSplit = escaped.length === 0 ? undefined : new RegExp(escaped.join('|'), 'g');
  }

  /** Counts the pre-tokenized pieces of `text` (special-token strings in it are skipped, as the encoder splits at them). */
  add(text: string): void {
    if (typeof text !== 'string') throw new InvalidArgumentError('text must be a string', { param: 'text' });
    const parts = this.#specialSplit === undefined ? [text] : text.split(this.#specialSplit);
    const counts = this.#wordCounts;
    for (const part of parts) {
      const re = new RegExp(PRETOKENIZE_PATTERN.source, PRETOKENIZE_PATTERN.flags);
      for (let m = re.exec(part); m !== null; m = re.exec(part)) {
        const w = m[0];
        counts.set(w, (counts.get(w) ?? 0) + 1);
        this.#totalWords++;
      }
    }
  }

  /** Statistics of the last `train()`. */
  get stats(): BpeStats | undefined {
    return this.#stats;
  }

  train(): BpeModel {
    const start = performance.now();
    const specials = this.#specials;
    const nSpecial = specials.length;
    const vocabSize = this.#options.vocabSize;
    const minFrequency = this.#minFrequency;
    const every = this.#options.progressEvery ?? 500;
    const B = MAX_VOCAB_SIZE;

    const b2u = byteToUnicode();
    const tokens: string[] = [...specials, ...b2u];
    const tokenIds = new Map<string, number>();
    tokens.forEach((t, i) => tokenIds.set(t, i));

    // Unique words → symbol arrays (byte b is id nSpecial + b).
    const encoder = new TextEncoder();
    const words: Int32Array[] = [];
    const freqs: number[] = [];
    for (const [w, f] of this.#wordCounts) {
      const bytes = encoder.encode(w);
      const sym = new Int32Array(bytes.length);
      for (let i = 0; i < bytes.length; i++) sym[i] = nSpecial + bytes[i];
      words.push(sym);
      freqs.push(f);
    }

    const pairCounts = new Map<number, number>();
    const where = new Map<number, number[]>();
    for (let w = 0; w < words.length; w++) {
      const sym = words[w];
      const f = freqs[w];
      for (let i = 0; i + 1 < sym.length; i++) {
        const key = sym[i] * B + sym[i + 1];
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + f);
        const list = where.get(key);
        if (list === undefined) where.set(key, [w]);
        else if (list[list.length - 1] !== w) list.push(w);
      }
    }
    const heap = new PairHeap();
    for (const [key, count] of pairCounts) heap.push(count, key);

    const merges: [string, string][] = [];
    const stamp = new Int32Array(words.length).fill(-1);
    const grown = new Set<number>();
    while (tokens.length < vocabSize && heap.size > 0) {
      const [stored, key] = heap.pop();
      const count = pairCounts.get(key) ?? 0;
      if (count !== stored) {
        if (count > 0) heap.push(count, key);
        continue;
      }
      if (count < minFrequency) break;
      const a = Math.floor(key / B);
      const b = key - a * B;
      const text = tokens[a] + tokens[b];
      let c = tokenIds.get(text);
      if (c === undefined) {
        c = tokens.length;
        tokens.push(text);
        tokenIds.set(text, c);
      }
      merges.push([tokens[a], tokens[b]]);
      const step = merges.length;

      grown.clear();
      for (const w of where.get(key) ?? []) {
        if (stamp[w] === step) continue;
        stamp[w] = step;
        const sym = words[w];
        let found = false;
        for (let i = 0; i + 1 < sym.length; i++) {
          if (sym[i] === a && sym[i + 1] === b) {
            found = true;
            break;
          }
        }
        if (!found) continue;
        const f = freqs[w];
        for (let i = 0; i + 1 < sym.length; i++) {
          const k = sym[i] * B + sym[i + 1];
          pairCounts.set(k, pairCounts.get(k)! - f);
        }
        const out = new Int32Array(sym.length);
        let n = 0;
        for (let i = 0; i < sym.length; ) {
          if (i + 1 < sym.length && sym[i] === a && sym[i + 1] === b) {
            out[n++] = c;
            i += 2;
          } else {
            out[n++] = sym[i++];
          }
        }
        const next = out.subarray(0, n);
        words[w] = next;
        for (let i = 0; i + 1 < n; i++) {
          const x = next[i];
          const y = next[i + 1];
          const k = x * B + y;
          pairCounts.set(k, (pairCounts.get(k) ?? 0) + f);
          if (x === c || y === c) {
            grown.add(k);
            const list = where.get(k);
            if (list === undefined) where.set(k, [w]);
            else if (list[list.length - 1] !== w) list.push(w);
          }
        }
      }
      where.delete(key);
      if ((pairCounts.get(key) ?? 0) === 0) pairCounts.delete(key);
      for (const k of grown) {
        const n = pairCounts.get(k) ?? 0;
        if (n > 0) heap.push(n, k);
      }
      if (this.#options.onProgress !== undefined && step % every === 0) this.#options.onProgress(step, tokens.length);
    }

    this.#stats = {
      uniqueWords: words.length,
      totalWords: this.#totalWords,
      merges: merges.length,
      seconds: (performance.now() - start) / 1000,
    };
    return { tokens, merges, specialTokens: specials };
  }
}

/** Trains on a list of texts (see `BpeTrainer`). */
export function trainBpe(texts: Iterable<string>, options: BpeTrainOptions): BpeModel {
  const trainer = new BpeTrainer(options);
  for (const t of texts) trainer.add(t);
  return trainer.train();
}

/** The HuggingFace tokenizer.json object for a trained model (BPE + ByteLevel pre-tokenizer and decoder). */
export function toTokenizerJson(model: BpeModel): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  model.tokens.forEach((t, i) => {
    if (!Object.hasOwn(vocab, t)) vocab[t] = i;
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: model.specialTokens.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: model.merges.map(([a, b]) => [a, b]),
    },
  };
}

export interface TokenizerConfigOptions {
  /** End-of-text token (default: the first special token). */
  eosToken?: string;
  bosToken?: string;
  /** A Jinja chat template to embed. */
  chatTemplate?: string;
  modelMaxLength?: number;
}

/** A tokenizer_config.json object matching `toTokenizerJson`. */
export function toTokenizerConfig(model: BpeModel, options: TokenizerConfigOptions = {}): Record<string, unknown> {
  const eos = options.eosToken ?? model.specialTokens[0];
  for (const [name, t] of [['eosToken', eos], ['bosToken', options.bosToken]] as const) {
    if (t !== undefined && !model.specialTokens.includes(t)) {
      throw new InvalidArgumentError(`${name} ${JSON.stringify(t)} is not one of the special tokens`, { param: name });
    }
  }
  const config: Record<string, unknown> = {
    add_prefix_space: false,
    clean_up_tokenization_spaces: false,
    tokenizer_class: 'GPT2Tokenizer',
    model_max_length: options.modelMaxLength ?? 1 << 20,
    additional_special_tokens: model.specialTokens.filter((t) => t !== eos && t !== options.bosToken),
  };
  if (eos !== undefined) config.eos_token = eos;
  if (options.bosToken !== undefined) config.bos_token = options.bosToken;
  if (options.chatTemplate !== undefined) config.chat_template = options.chatTemplate;
  return config;
}

/** Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed). Returns the tokenizer.json path. */
export async function writeTokenizer(dir: string, model: BpeModel, options: TokenizerConfigOptions = {}): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, 'tokenizer.json');
  await fs.writeFile(file, JSON.stringify(toTokenizerJson(model)) + '\n');
  await fs.writeFile(path.join(dir, 'tokenizer_config.json'), JSON.stringify(toTokenizerConfig(model, options), null, 2) + '\n');
  return file;
}
