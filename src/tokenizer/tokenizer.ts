/**
 * Tokenizer and chat template for the MiniMax-01 family (MODEL.md §3; SERVING.md §10, T1–T8).
 *
 * Wraps `@huggingface/tokenizers` (byte-level BPE from tokenizer.json) and `@huggingface/jinja` (a sandboxed
 * interpreter with no eval, T1) behind one class that adds what serving needs:
 *  - load-time checks: JSON errors name the file; nested-quantifier regexes are refused before the library
 *    compiles them, because it runs them on a backtracking engine (T6);
 *  - input bounds: `encode` refuses text over 64 Mi characters, rendering refuses output over 64 Mi (T2, V5);
 *  - chat content normalisation, because the MiniMax template indexes `content[0].text` (T4);
 *  - a special-token injection policy for chat (T5), described at `encodeChat`;
 *  - HF-compatible edge cases the library does not have: `decode([])` is '', ids with no token decode to ''.
 */

import fs from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { InvalidArgumentError, TokenizerError } from '../util/errors.js';
import { IncrementalDecoder } from './decoder.js';

import { findNestedQuantifier, forEachRegex } from './regex-guard.js';
import { checkTools, describe, normalizeMessages, tooDeep, walkStrings, MAX_VALUE_DEPTH } from './messages.js';
export { IncrementalDecoder } from './decoder.js';
export { findNestedQuantifier } from './regex-guard.js';
export type { DecodeSource, IncrementalDecoderOptions } from './decoder.js';

/** Longest text `encode` accepts, in UTF-16 code units (64 Mi). */
export const MAX_ENCODE_CHARS = 64 * 1024 * 1024;
/** Longest chat rendering accepted, in UTF-16 code units (64 Mi). */
export const MAX_RENDERED_CHARS = 64 * 1024 * 1024;
/** Deepest nesting of messages / tools values walked when looking for special-token strings. */

export interface ChatContentPart {
  type: string;
  text?: string;
  name?: string;
  [k: string]: unknown;
}

export interface ChatMessage {
  role: string;
  content: string | ChatContentPart[] | null;
  name?: string;
  tool_calls?: unknown;
  tool_call_id?: string;
  [k: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Tool definitions (OpenAI shape), passed to the template untouched. */
  tools?: readonly unknown[];
  /** Append the assistant header so the model writes the reply. Default true. */
  addGenerationPrompt?: boolean;
  /**
   * Let special-token strings inside message text and tool definitions become control tokens. Default false:
   * they are encoded as ordinary text (see `encodeChat`). Only for trusted callers.
   */
  allowSpecialTokensInContent?: boolean;
}

// ---------------------------------------------------------------------------------------------------------------
// Special-token matching (longest match at each position, as the library's added-token splitter does)

interface SpecialToken {
  content: string;
  id: number;
  lstrip: boolean;
  rstrip: boolean;
}

interface TrieNode {
  next: Map<string, TrieNode>;
  /** Index into the special-token list when a token ends here. */
  token: number;
}

class SpecialMatcher {
  readonly #root: TrieNode = { next: new Map(), token: -1 };
  readonly tokens: readonly SpecialToken[];

  constructor(tokens: readonly SpecialToken[]) {
    this.tokens = tokens;
    tokens.forEach((t, index) => {
      let node = this.#root;
      // By UTF-16 code unit, as `matchAt` walks the text.
      for (let k = 0; k < t.content.length; k++) {
        const ch = t.content[k];
        let child = node.next.get(ch);
        if (child === undefined) {
          child = { next: new Map(), token: -1 };
          node.next.set(ch, child);
        }
        node = child;
      }
      node.token = index;
    });
  }

  /** The longest special token starting at `s[i]`: [token index, length], or undefined. */
  matchAt(s: string, i: number): [number, number] | undefined {
    let node = this.#root.next.get(s[i]);
    let best: [number, number] | undefined;
    let j = i;
    while (node !== undefined) {
      j++;
      if (node.token >= 0) best = [node.token, j - i];
      if (j >= s.length) break;
      node = node.next.get(s[j]);
    }
    return best;
  }

  contains(s: string): boolean {
    if (this.tokens.length === 0) return false;
    for (let i = 0; i < s.length; i++) if (this.matchAt(s, i) !== undefined) return true;
    return false;
  }

  /** Replaces every special-token occurrence in `s` (scanning left to right, longest match first). */
  replace(s: string, replacement: (token: number) => string): string {
    let out = '';
    let from = 0;
    let i = 0;
    while (i < s.length) {
      const m = this.matchAt(s, i);
      if (m === undefined) {
        i++;
        continue;
      }
      out += s.slice(from, i) + replacement(m[0]);
      i += m[1];
      from = i;
    }
    return from === 0 ? s : out + s.slice(from);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Loading helpers

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

function errorMessage(e: unknown): string {
  return oneLine(e instanceof Error ? e.message : String(e));
}

/** A special token in tokenizer_config.json: a string or an AddedToken-like `{content}` object. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new TokenizerError(`cannot read ${file}: ${errorMessage(e)}`, { file, cause: e });
  }
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${file} is not valid JSON: ${errorMessage(e)}`, { file, cause: e });
  }
}

interface TemplateChoice {
  source: string | undefined;
  file: string;
  /** Why there is no usable template, when `source` is undefined. */
  missing?: string;
}

/** `chat_template` as found in tokenizer_config.json / chat_template.json: a string or [{name, template}]. */
function pickTemplate(value: unknown, file: string): TemplateChoice {
  if (value === undefined || value === null) return { source: undefined, file, missing: `${file} has no chat_template` };
  if (typeof value === 'string') return { source: value, file };
  if (Array.isArray(value)) {
    const names: string[] = [];
    for (const [k, entry] of value.entries()) {
      if (!isObject(entry) || typeof entry.name !== 'string' || typeof entry.template !== 'string') {
        throw new TokenizerError(`${file}: chat_template[${k}] must be {name: string, template: string}`, { file });
      }
      if (entry.name === 'default') return { source: entry.template, file };
      names.push(entry.name);
    }
    return {
      source: undefined,
      file,
      missing: `${file} has named chat templates (${names.join(', ')}) but none named "default"`,
    };
  }
  throw new TokenizerError(`${file}: chat_template must be a string or a list of {name, template}`, { file });
}

interface LoadSources {
  tokenizerFile: string;
  configFile: string;
  /** A template found outside tokenizer_config.json (chat_template.jinja / chat_template.json). */
  template?: TemplateChoice;
}

/** The library's private fields the no-special-tokens encoder relies on (checked at run time). */
interface HfInternals {
  splitter_unnormalized?: { split?: unknown; constructor: new (words: string[]) => unknown };
  splitter_normalized?: unknown;
  added_tokens_map?: unknown;
  added_tokens?: unknown;
}

interface AddedTokenJson {
  id: number;
  content: string;
  special: boolean;
  normalized: boolean;
  lstrip: boolean;
  rstrip: boolean;
}

// ---------------------------------------------------------------------------------------------------------------

export class Tokenizer {
  /** Max token id + 1 over the model vocabulary and the added tokens (compare with the embedding rows, T8). */
  readonly vocabSize: number;
  readonly bosToken: string | undefined;
  readonly bosTokenId: number | undefined;
  readonly eosToken: string | undefined;
  readonly eosTokenId: number | undefined;
  /** Ids of added tokens marked special, plus `additional_special_tokens` from tokenizer_config.json. */
  readonly specialTokenIds: ReadonlySet<number>;
  readonly hasChatTemplate: boolean;

  readonly #hf: HfTokenizer;
  readonly #tokenizerFile: string;
  readonly #tokenizerJson: JsonObject;
  readonly #libConfig: JsonObject;
  readonly #addedTokens: readonly AddedTokenJson[];
  readonly #special: SpecialMatcher;
  readonly #unkToken: string | undefined;
  readonly #templateChoice: TemplateChoice;
  #template: Template | undefined;
  /** Encodes without recognising special tokens; built on first use. */
  #plain: HfTokenizer | undefined;

  private constructor(tokenizerJson: unknown, tokenizerConfig: unknown, sources: LoadSources) {
    const file = sources.tokenizerFile;
    const configFile = sources.configFile;
    if (!isObject(tokenizerJson)) throw new TokenizerError(`${file} must contain a JSON object`, { file });
    if (!isObject(tokenizerJson.model)) throw new TokenizerError(`${file} has no "model" object`, { file });
    if (tokenizerJson.added_tokens !== undefined && !Array.isArray(tokenizerJson.added_tokens)) {
      throw new TokenizerError(`${file}: added_tokens must be an array`, { file });
    }
    if (tokenizerConfig !== undefined && tokenizerConfig !== null && !isObject(tokenizerConfig)) {
      throw new TokenizerError(`${configFile} must contain a JSON object`, { file: configFile });
    }
    const config: JsonObject = isObject(tokenizerConfig) ? tokenizerConfig : {};
    this.#tokenizerFile = file;

    // T6: refuse catastrophic-backtracking patterns before the library compiles them.
    for (const section of ['normalizer', 'pre_tokenizer', 'decoder'] as const) {
      forEachRegex(tokenizerJson[section], section, (regex, where) => {
        const problem = findNestedQuantifier(regex);
        if (problem !== undefined) {
          throw new TokenizerError(
            `${file}: ${where} is refused: ${problem} (such patterns can backtrack catastrophically, CWE-1333)`,
            { file, hint: 'use the tokenizer.json published with the model' },
          );
        }
      });
    }

    const added: AddedTokenJson[] = [];
    for (const [k, t] of ((tokenizerJson.added_tokens as unknown[] | undefined) ?? []).entries()) {
      if (!isObject(t) || typeof t.content !== 'string' || typeof t.id !== 'number' || !Number.isInteger(t.id) || t.id < 0) {
        throw new TokenizerError(`${file}: added_tokens[${k}] must have a string "content" and an integer "id"`, { file });
      }
      const special = t.special === true;
      added.push({
        id: t.id,
        content: t.content,
        special,
        normalized: typeof t.normalized === 'boolean' ? t.normalized : !special,
        lstrip: t.lstrip === true,
        rstrip: t.rstrip === true,
      });
    }
    this.#addedTokens = added;

    // The library expects additional_special_tokens as strings; HF configs may hold AddedToken objects.
    const additional = Array.isArray(config.additional_special_tokens)
      ? config.additional_special_tokens.map(tokenString).filter((s): s is string => s !== undefined && s !== '')
      : [];
    this.#libConfig = { ...config, additional_special_tokens: additional };
    this.#tokenizerJson = tokenizerJson;

    try {
      this.#hf = new HfTokenizer(tokenizerJson, this.#libConfig);
    } catch (e) {
      throw new TokenizerError(`${file} was rejected by the tokenizer library: ${errorMessage(e)}`, { file, cause: e });
    }

    const vocab = this.#hf.model?.vocab;
    let size = Array.isArray(vocab) ? vocab.length : 0;
    while (size > 0 && vocab[size - 1] === undefined) size--;
    if (size === 0) throw new TokenizerError(`${file}: the vocabulary is empty`, { file });
    this.vocabSize = size;

    const specialIds = new Set<number>();
    const specialTokens: SpecialToken[] = [];
    const additionalSet = new Set(additional);
    for (const t of added) {
      if (t.special || additionalSet.has(t.content)) {
        specialIds.add(t.id);
        if (t.content !== '') specialTokens.push({ content: t.content, id: t.id, lstrip: t.lstrip, rstrip: t.rstrip });
      }
    }
    for (const s of additional) {
      const id = this.#hf.token_to_id(s);
      if (id !== undefined) specialIds.add(id);
    }
    this.specialTokenIds = specialIds;
    this.#special = new SpecialMatcher(specialTokens);

    this.bosToken = tokenString(config.bos_token);
    this.eosToken = tokenString(config.eos_token);
    this.#unkToken = tokenString(config.unk_token);
    this.bosTokenId = this.bosToken === undefined ? undefined : this.#hf.token_to_id(this.bosToken);
    this.eosTokenId = this.eosToken === undefined ? undefined : this.#hf.token_to_id(this.eosToken);

    this.#templateChoice = sources.template ?? pickTemplate(config.chat_template, configFile);
    this.hasChatTemplate = this.#templateChoice.source !== undefined;
  }

  /**
   * Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional; holds the special tokens and the chat
   * template) from a model folder. A `chat_template.jinja`, or else a `chat_template.json`, next to them overrides
   * the config's template, as in recent transformers.
   */
  static async fromDir(dir: string): Promise<Tokenizer> {
    const tokenizerFile = path.join(dir, 'tokenizer.json');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const tokenizerText = await readOptional(tokenizerFile);
    if (tokenizerText === undefined) {
      throw new TokenizerError(`${tokenizerFile} not found`, {
        file: tokenizerFile,
        hint: 'the model folder must contain the tokenizer.json published with the model',
      });
    }
    const tokenizerJson = parseJson(tokenizerText, tokenizerFile);
    const configText = await readOptional(configFile);
    const config = configText === undefined ? undefined : parseJson(configText, configFile);

    let template: TemplateChoice | undefined;
    const jinjaFile = path.join(dir, 'chat_template.jinja');
    const jinja = await readOptional(jinjaFile);
    if (jinja !== undefined) {
      template = { source: jinja, file: jinjaFile };
    } else {
      const jsonFile = path.join(dir, 'chat_template.json');
      const jsonText = await readOptional(jsonFile);
      if (jsonText !== undefined) {
        const parsed = parseJson(jsonText, jsonFile);
        if (!isObject(parsed)) throw new TokenizerError(`${jsonFile} must contain a JSON object`, { file: jsonFile });
        template = pickTemplate(parsed.chat_template, jsonFile);
      }
    }
    return new Tokenizer(tokenizerJson, config, { tokenizerFile, configFile, template });
  }

  /**
   * Builds a tokenizer from already-parsed `tokenizer.json` and `tokenizer_config.json` contents. `source` (a folder
   * or a label) is used to name the files in error messages.
   */
  static fromObjects(tokenizerJson: unknown, tokenizerConfig: unknown | undefined, source?: string): Tokenizer {
    const label = (name: string): string => (source === undefined ? name : path.join(source, name));
    return new Tokenizer(tokenizerJson, tokenizerConfig, {
      tokenizerFile: label('tokenizer.json'),
      configFile: label('tokenizer_config.json'),
    });
  }

  /**
   * Text → ids. Never adds BOS/EOS. With `parseSpecialTokens` (default true) a special-token string such as
   * `<end_of_sentence>` becomes its id; with false it is tokenized as ordinary text (non-special added tokens are
   * still recognised, as with transformers' `split_special_tokens=True`).
   */
  encode(text: string, options: { parseSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') {
      throw new InvalidArgumentError(`text must be a string, got ${describe(text)}`, { param: 'text' });
    }
    if (text.length > MAX_ENCODE_CHARS) {
      throw new InvalidArgumentError(
        `text has ${text.length} characters; the limit is ${MAX_ENCODE_CHARS} (64 Mi)`,
        { param: 'text' },
      );
    }
    if (text.length === 0) return [];
    const hf = options.parseSpecialTokens === false ? this.#plainEncoder() : this.#hf;
    const ids = hf.encode(text, { add_special_tokens: false }).ids;
    for (const id of ids) {
      if (typeof id !== 'number') {
        throw new TokenizerError(`${this.#tokenizerFile}: a piece of the text has no token and there is no unk_token`, {
          file: this.#tokenizerFile,
        });
      }
    }
    return ids;
  }

  /**
   * Ids → text. `[]` gives ''. Like transformers, ids that have no token (e.g. embedding rows past the vocabulary)
   * contribute nothing rather than failing.
   */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (!Array.isArray(ids)) throw new InvalidArgumentError(`ids must be an array, got ${describe(ids)}`, { param: 'ids' });
    let known: number[] | undefined;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw new InvalidArgumentError(`ids[${i}] must be a non-negative integer, got ${String(id)}`, { param: 'ids' });
      }
      if (this.#hf.id_to_token(id) === undefined) {
        known ??= ids.slice(0, i);
      } else if (known !== undefined) {
        known.push(id);
      }
    }
    const list = known ?? (ids as number[]);
    if (list.length === 0) return '';
    return this.#hf.decode(list, { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0) return undefined;
    return this.#hf.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  /** A streaming decoder over this tokenizer (see decoder.ts for its guarantees). */
  createDecoder(options: { skipSpecialTokens?: boolean } = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, options);
  }

  /**
   * Renders a conversation with the model's chat template, after content normalisation (T4):
   *  - string content → `[{type: 'text', text}]`; null/absent content → no parts;
   *  - user and system messages: all text parts are joined into ONE part with no separator (the template reads only
   *    `content[0].text`; '' matches how the template itself joins assistant parts), so `content[0]` always exists;
   *  - tool messages: every part gets a `name` (the part's own, else the message's `name`, else `tool_call_id`,
   *    else ''), since the template prints `content['name']`;
   *  - assistant and other roles keep their text parts; `tool_calls` and other fields pass through untouched.
   * Parts whose type is not 'text' (images, audio, ...) are refused: the model reads text only.
   * The template also sees `tools`, `add_generation_prompt`, `bos_token`, `eos_token` and `unk_token`.
   */
  renderChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const normalized = normalizeMessages(messages);
    const tools = checkTools(options.tools);
    return this.#render(normalized, tools, options.addGenerationPrompt ?? true);
  }

  /**
   * Renders and encodes a conversation (the ids to prefill; no BOS/EOS is added, the template has them).
   *
   * Special-token injection policy (T5): the template's own special tokens are control tokens; special-token
   * strings that come from the caller (message text, tool names and results, tool definitions) are encoded as
   * ordinary text, so a user cannot close a turn or forge a system block by typing `<end_of_sentence>`.
   * `allowSpecialTokensInContent: true` turns this off (trusted callers only).
   * When no caller string contains a special-token string (the normal case), the rendering is encoded as a whole,
   * so the ids are exactly what transformers produces. Otherwise each caller occurrence is replaced by a private-use
   * sentinel before rendering; the rendering is split at the special tokens that remain (which can only come from
   * the template), the sentinels are turned back into their text, and each section between control tokens is
   * encoded without special-token recognition, which gives the ids the tokenizer would produce if those strings were
   * not special.
   */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    const normalized = normalizeMessages(messages);
    const tools = checkTools(options.tools);
    const addGenerationPrompt = options.addGenerationPrompt ?? true;
    if (options.allowSpecialTokensInContent === true || !this.#callerHasSpecial(normalized, tools)) {
      return this.#encodeRendered(this.#render(normalized, tools, addGenerationPrompt));
    }

    const sentinel = this.#pickSentinel(normalized, tools);
    const mark = (token: number): string => `${sentinel}${token}${sentinel}`;
    const safeMessages = this.#defang(normalized, mark, 'messages', 0) as Record<string, unknown>[];
    const safeTools = tools === undefined ? undefined : (this.#defang(tools, mark, 'tools', 0) as unknown[]);
    const rendered = this.#render(safeMessages, safeTools, addGenerationPrompt);
    return this.#encodeDefanged(rendered, sentinel);
  }

  // --- chat internals ------------------------------------------------------------------------------------------

  #getTemplate(): Template {
    if (this.#template !== undefined) return this.#template;
    const choice = this.#templateChoice;
    if (choice.source === undefined) {
      throw new TokenizerError(`no chat template: ${choice.missing ?? `${choice.file} has no chat_template`}`, {
        file: choice.file,
        hint: 'add "chat_template" to tokenizer_config.json, or put a chat_template.jinja next to it',
      });
    }
    try {
      this.#template = new Template(choice.source);
    } catch (e) {
      throw new TokenizerError(`chat template in ${choice.file} does not parse: ${errorMessage(e)}`, {
        file: choice.file,
        cause: e,
      });
    }
    return this.#template;
  }

  #render(messages: readonly object[], tools: readonly unknown[] | undefined, addGenerationPrompt: boolean): string {
    const template = this.#getTemplate();
    const context: Record<string, unknown> = { messages, add_generation_prompt: addGenerationPrompt };
    if (tools !== undefined) context.tools = tools;
    if (this.bosToken !== undefined) context.bos_token = this.bosToken;
    if (this.eosToken !== undefined) context.eos_token = this.eosToken;
    if (this.#unkToken !== undefined) context.unk_token = this.#unkToken;
    let out: string;
    try {
      out = template.render(context);
    } catch (e) {
      throw new TokenizerError(`chat template failed: ${errorMessage(e)}`, { file: this.#templateChoice.file, cause: e });
    }
    if (out.length > MAX_RENDERED_CHARS) {
      throw new TokenizerError(
        `chat template output has ${out.length} characters; the limit is ${MAX_RENDERED_CHARS} (64 Mi)`,
        { file: this.#templateChoice.file },
      );
    }
    return out;
  }

  #encodeRendered(rendered: string): number[] {
    if (rendered.length === 0) return [];
    return this.#hf.encode(rendered, { add_special_tokens: false }).ids;
  }

  #callerHasSpecial(messages: readonly object[], tools: readonly unknown[] | undefined): boolean {
    let found = false;
    const visit = (s: string): void => {
      if (!found && this.#special.contains(s)) found = true;
    };
    walkStrings(messages, visit, 'messages', 0);
    if (tools !== undefined) walkStrings(tools, visit, 'tools', 0);
    return found;
  }

  /** A private-use character that occurs in no caller string, no special token and not in the template. */
  #pickSentinel(messages: readonly object[], tools: readonly unknown[] | undefined): string {
    const used = new Set<number>();
    const collect = (s: string): void => {
      for (let i = 0; i < s.length; i++) {
        const cp = s.codePointAt(i) as number;
        if (cp > 0xffff) i++;
        if ((cp >= 0xe000 && cp <= 0xf8ff) || cp >= 0xf0000) used.add(cp);
      }
    };
    walkStrings(messages, collect, 'messages', 0);
    if (tools !== undefined) walkStrings(tools, collect, 'tools', 0);
    for (const t of this.#special.tokens) collect(t.content);
    collect(this.#templateChoice.source ?? '');
    for (let cp = 0xe000; cp <= 0xf8ff; cp++) if (!used.has(cp)) return String.fromCodePoint(cp);
    for (let cp = 0xf0000; cp <= 0x10fffd; cp++) if (!used.has(cp)) return String.fromCodePoint(cp);
    throw new InvalidArgumentError('messages use every private-use character; cannot apply the special-token policy', {
      param: 'messages',
    });
  }

  /** Deep copy of `value` with every special-token occurrence in strings (values and keys) replaced. */
  #defang(value: unknown, mark: (token: number) => string, param: string, depth: number): unknown {
    if (typeof value === 'string') return this.#special.replace(value, mark);
    if (value === null || typeof value !== 'object') return value;
    if (depth >= MAX_VALUE_DEPTH) tooDeep(param);
    if (Array.isArray(value)) return value.map((v) => this.#defang(v, mark, param, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[this.#special.replace(k, mark)] = this.#defang(v, mark, param, depth + 1);
    }
    return out;
  }

  /**
   * Encodes a rendering whose caller-supplied special strings are sentinels: special tokens left in it came from
   * the template and become control tokens; everything between them is encoded as plain text once the sentinels
   * are turned back into the strings they stand for.
   */
  #encodeDefanged(rendered: string, sentinel: string): number[] {
    const parts = rendered.split(sentinel);
    if (parts.length % 2 === 0) {
      throw new TokenizerError('chat template altered message text; cannot apply the special-token policy', {
        file: this.#templateChoice.file,
        hint: 'pass allowSpecialTokensInContent: true for trusted input',
      });
    }
    const tokens = this.#special.tokens;
    // Items: text, or a control token (index into `tokens`).
    const items: Array<string | number> = [];
    const pushText = (s: string): void => {
      if (typeof items[items.length - 1] === 'string') items[items.length - 1] += s;
      else items.push(s);
    };
    for (let p = 0; p < parts.length; p++) {
      const part = parts[p];
      if (p % 2 === 1) {
        const index = /^\d+$/.test(part) ? Number(part) : -1;
        if (index < 0 || index >= tokens.length) {
          throw new TokenizerError('chat template altered message text; cannot apply the special-token policy', {
            file: this.#templateChoice.file,
            hint: 'pass allowSpecialTokensInContent: true for trusted input',
          });
        }
        pushText(tokens[index].content);
        continue;
      }
      let from = 0;
      let i = 0;
      while (i < part.length) {
        const m = this.#special.matchAt(part, i);
        if (m === undefined) {
          i++;
          continue;
        }
        if (i > from) pushText(part.slice(from, i));
        items.push(m[0]);
        i += m[1];
        from = i;
      }
      if (from < part.length) pushText(part.slice(from));
    }
    // lstrip / rstrip of control tokens eat whitespace of the neighbouring text, as the library does.
    for (let k = 0; k < items.length; k++) {
      const item = items[k];
      if (typeof item !== 'number') continue;
      if (tokens[item].lstrip && typeof items[k - 1] === 'string') items[k - 1] = (items[k - 1] as string).trimEnd();
      if (tokens[item].rstrip && typeof items[k + 1] === 'string') items[k + 1] = (items[k + 1] as string).trimStart();
    }
    const ids: number[] = [];
    for (const item of items) {
      if (typeof item === 'number') ids.push(tokens[item].id);
      else if (item.length > 0) for (const id of this.encode(item, { parseSpecialTokens: false })) ids.push(id);
    }
    return ids;
  }

  /**
   * A view of the library tokenizer that does not split on special tokens. It shares the normalizer,
   * pre-tokenizer, model and decoder, and replaces only the added-token splitters and lookup with ones built from
   * the non-special added tokens, so the library's own encode path runs unchanged. If the library's internals do
   * not look as expected (another version), it falls back to a second library instance built without the special
   * added tokens, which is exact but costs another copy of the vocabulary.
   */
  #plainEncoder(): HfTokenizer {
    if (this.#plain !== undefined) return this.#plain;
    const specialIds = this.specialTokenIds;
    const ordinary = this.#addedTokens.filter((t) => !specialIds.has(t.id));
    const internals = this.#hf as unknown as HfInternals;
    const Splitter = internals.splitter_unnormalized?.constructor;
    if (
      typeof internals.splitter_unnormalized?.split === 'function' &&
      internals.splitter_normalized !== undefined &&
      internals.added_tokens_map instanceof Map &&
      typeof Splitter === 'function'
    ) {
      const oldMap = internals.added_tokens_map as Map<string, unknown>;
      const map = new Map<string, unknown>();
      const unnormalized: string[] = [];
      const normalized: string[] = [];
      const normalizer = this.#hf.normalizer;
      for (const t of ordinary) {
        map.set(t.content, oldMap.get(t.content));
        if (t.normalized && normalizer !== null) {
          const n = normalizer(t.content) as string;
          normalized.push(n);
          map.set(n, oldMap.get(t.content));
        } else {
          unnormalized.push(t.content);
        }
      }
      const view = Object.create(Object.getPrototypeOf(this.#hf) as object) as HfTokenizer;
      Object.assign(view, this.#hf, {
        splitter_unnormalized: new Splitter(unnormalized),
        splitter_normalized: new Splitter(normalized),
        added_tokens_map: map,
      });
      this.#plain = view;
    } else {
      const json = { ...this.#tokenizerJson, added_tokens: ordinary.map((t) => ({ ...t, single_word: false })) };
      this.#plain = new HfTokenizer(json, { ...this.#libConfig, additional_special_tokens: [] });
    }
    return this.#plain;
  }
}
