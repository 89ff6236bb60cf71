/**
 * Streaming detokenization (SERVING.md §5 streaming, MODEL.md §3 byte-level BPE).
 *
 * Byte-level BPE splits one character's UTF-8 bytes over several tokens, so decoding token by token would emit
 * U+FFFD halves. `IncrementalDecoder` keeps vLLM-style offsets: it decodes only a short window of recent ids
 * (`ids[prefixOffset:]`, where `ids[prefixOffset:readOffset]` is context that was already emitted) and holds back
 * a trailing U+FFFD, because that is how an incomplete UTF-8 sequence at the end of the window decodes.
 *
 * Guarantee (for decoders that are concatenative at character boundaries, such as byte-level BPE without
 * `clean_up_tokenization_spaces`): the chunks returned by `push`/`pushMany`, followed by `flush()`, concatenate to
 * `decode(ids)`, and no chunk returned before `flush()` ends in a character that later ids could still change.
 *
 * U+FFFD policy: a trailing U+FFFD is held back until a later id makes the window end in something else (it was
 * either completed into a real character, or it turns out to be final and is released with the text after it),
 * or until `flush()`. So a genuine U+FFFD from the model, or the replacement for an invalid byte, is released as
 * soon as any following text arrives, and at the latest by `flush()`. Everything before the last character of the
 * window is final in UTF-8 (a decoder never revises output it has produced for earlier bytes), so it is emitted
 * immediately even while the last character is held.
 */

import { InvalidArgumentError } from '../util/errors.js';

/** What the incremental decoder needs from a tokenizer: a stateless decode of an id list. */
export interface DecodeSource {
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
}

export interface IncrementalDecoderOptions {
  /** Drop special tokens (e.g. `<end_of_sentence>`) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

const REPLACEMENT = '\uFFFD';

/**
 * When the window has gone this many ids past the read offset while still ending in U+FFFD, look for an earlier
 * point where the decode is final so that the window stops growing. Any incomplete UTF-8 sequence is at most 3
 * bytes, so in a normal stream the window never gets this long; it only happens on a run of invalid bytes or of
 * genuine U+FFFD characters, which would otherwise make each step cost O(window).
 */
const MAX_PENDING_IDS = 8;
/** How many cut points to try (from the end) when the window is too long. */
const MAX_CUT_TRIES = 4;

export class IncrementalDecoder {
  readonly #source: DecodeSource;
  readonly #skipSpecialTokens: boolean;
  readonly #ids: number[] = [];
  /** Window start: ids before it are final and emitted. */
  #prefixOffset = 0;
  /** ids in [prefixOffset, readOffset) are context whose text was already emitted. */
  #readOffset = 0;
  /** decode(ids[prefixOffset:readOffset]). */
  #prefixText = '';
  /** How many characters of decode(ids[prefixOffset:]) have been emitted (the prefix text counts as emitted). */
  #sent = 0;

  constructor(source: DecodeSource, options: IncrementalDecoderOptions = {}) {
    this.#source = source;
    this.#skipSpecialTokens = options.skipSpecialTokens ?? false;
  }

  /** Every id pushed so far, in order. */
  get ids(): readonly number[] {
    return this.#ids;
  }

  /** Adds one id; returns the text that became final (possibly ''). */
  push(id: number): string {
    checkId(id, 'id');
    this.#ids.push(id);
    return this.#step();
  }

  /** Adds several ids at once; returns the text that became final (possibly ''). */
  pushMany(ids: readonly number[]): string {
    if (!Array.isArray(ids)) throw new InvalidArgumentError('ids must be an array of token ids', { param: 'ids' });
    // Validate everything first so a bad id leaves the decoder unchanged.
    for (let i = 0; i < ids.length; i++) checkId(ids[i], `ids[${i}]`);
    if (ids.length === 0) return '';
    for (const id of ids) this.#ids.push(id);
    return this.#step();
  }

  /**
   * Returns whatever is held back (an incomplete or trailing U+FFFD character) at the end of generation. Later
   * pushes start a fresh window, as if the stream began again at this point.
   */
  flush(): string {
    const text = this.#decode(this.#prefixOffset, this.#ids.length);
    const out = text.length > this.#sent ? text.slice(this.#sent) : '';
    this.#prefixOffset = this.#ids.length;
    this.#readOffset = this.#ids.length;
    this.#prefixText = '';
    this.#sent = 0;
    return out;
  }

  #decode(start: number, end: number): string {
    if (end <= start) return '';
    return this.#source.decode(this.#ids.slice(start, end), { skipSpecialTokens: this.#skipSpecialTokens });
  }

  #step(): string {
    const end = this.#ids.length;
    const text = this.#decode(this.#prefixOffset, end);
    const pending = text.endsWith(REPLACEMENT);
    const stable = pending ? text.length - 1 : text.length;
    let out = '';
    // `stable < #sent` only happens with decoders whose output is not monotone in the ids; we cannot take text
    // back, so we wait until the window catches up.
    if (stable > this.#sent) {
      out = text.slice(this.#sent, stable);
      this.#sent = stable;
    }
    if (!pending) {
      // The window ends on a complete character: slide it (vLLM: prefix_offset = read_offset, read_offset = end).
      // Ids that added no text (e.g. skipped special tokens) do not move it, so the context stays meaningful,
      // unless there are so many of them that the window would keep growing.
      if (text.length > this.#prefixText.length || end - this.#readOffset > MAX_PENDING_IDS) this.#moveWindow(end);
    } else if (end - this.#readOffset > MAX_PENDING_IDS) {
      this.#cutLongWindow(text);
    }
    return out;
  }

  /** Everything in the window up to `newRead` has been emitted: make [readOffset, newRead) the new context. */
  #moveWindow(newRead: number): void {
    this.#prefixOffset = this.#readOffset;
    this.#readOffset = newRead;
    this.#prefixText = this.#decode(this.#prefixOffset, this.#readOffset);
    this.#sent = this.#prefixText.length;
  }

  /**
   * The window keeps ending in U+FFFD. Find a cut k where decoding is final: decode(head) + decode(tail) equals
   * decode(window), which in UTF-8 means no multi-byte sequence is split at k (a split sequence decodes to
   * different replacement characters on the two sides than it does whole). Then slide the window to k.
   */
  #cutLongWindow(text: string): void {
    const end = this.#ids.length;
    const lowest = Math.max(this.#readOffset + 1, end - MAX_CUT_TRIES);
    for (let k = end - 1; k >= lowest; k--) {
      const head = this.#decode(this.#prefixOffset, k);
      const tail = this.#decode(k, end);
      if (tail.length === 0 || head.length < this.#prefixText.length || head + tail !== text) continue;
      // head is a strict prefix of text that ends before the held-back last character, so it was all emitted.
      this.#prefixOffset = this.#readOffset;
      this.#readOffset = k;
      this.#prefixText = this.#decode(this.#prefixOffset, k);
      // Recount in the new window's own terms (a decoder may render the window start differently, e.g. strip a
      // leading space): all of it except the held-back last character has been emitted.
      this.#sent = this.#decode(this.#prefixOffset, end).length - 1;
      return;
    }
  }
}

function checkId(id: unknown, name: string): void {
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
    throw new InvalidArgumentError(`${name} must be a non-negative integer token id, got ${String(id)}`, {
      param: name.startsWith('ids') ? 'ids' : 'id',
    });
  }
}
