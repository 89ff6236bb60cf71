/**
 * Validation of OpenAI request bodies (SERVING.md §3 V1–V12, §4), free of any HTTP framework.
 *
 * The rules:
 *  - the only thing thrown is HttpError 400 (or 415 from `parseJsonBody`): bad input is never a 500 (E3);
 *  - types are checked before ranges (V3), so `temperature: "0.5"` says "must be a number, got string";
 *  - `null` for an optional field means absent; unknown fields are tolerated (V10); unsupported features are
 *    refused, never silently ignored;
 *  - every message names the field in `param` and echoes at most 200 characters of the caller's value (E2);
 *  - every count-like parameter has an upper bound (V12);
 *  - fields are read with `Object.hasOwn` and the body is never merged into another object, so keys such as
 *    `__proto__` are inert.
 *
 * Messages are checked and reshaped for the MiniMax template here (OpenAI shape → what `normalizeMessages` in the
 * tokenizer expects); the tokenizer then does the template-level normalisation (T4).
 */

import type { ChatContentPart, ChatMessage } from '../tokenizer/tokenizer.js';
import { HttpError, badRequest, echo, unsupportedMediaType } from './errors.js';
import { formatToolCalls } from './tool-calls.js';

export interface ServerLimits {
  /** Most choices per request (`n`), ≤ 128 (V12). */
  maxN: number;
  /** Most stop strings (V6). */
  maxStops: number;
  /** Longest stop string, in characters. */
  maxStopLength: number;
  /** Highest chat `top_logprobs` (V7). Legacy completions `logprobs` is capped at min(5, this). */
  maxTopLogprobs: number;
  /** Highest `max_tokens`; the caller also uses it as the chat default, bounded by the remaining context (§4). */
  maxTokensCap: number;
  /** Longest prompt in characters, checked before tokenizing (V5). Also bounds token-array prompts. */
  maxPromptChars: number;
  /** Most `logit_bias` entries. */
  maxLogitBias: number;
}

export const DEFAULT_LIMITS: ServerLimits = Object.freeze({
  maxN: 16,
  maxStops: 4,
  maxStopLength: 256,
  maxTopLogprobs: 20,
  maxTokensCap: 16384,
  maxPromptChars: 4 * 1024 * 1024,
  maxLogitBias: 1024,
});

/** Legacy completions `logprobs` cap (OpenAI: 5). */
export const LEGACY_MAX_LOGPROBS = 5;
/** Default `max_tokens` of legacy completions when omitted (OpenAI spec; §4). `parseCompletionRequest` leaves it undefined. */
export const COMPLETION_DEFAULT_MAX_TOKENS = 16;
/** `n` never exceeds this, whatever `limits.maxN` says (V12; vLLM CVE-2026-34756). */
export const MAX_N_HARD_CAP = 128;
/** Bounds for lists that have no limit of their own in ServerLimits (V12). */
export const MAX_MESSAGES = 10_000;
export const MAX_TOOLS = 128;
export const MAX_TOOL_CALLS_PER_MESSAGE = 128;
export const MAX_STOP_TOKEN_IDS = 256;
/** At most this many bad entries are listed in one message (E2). */
const MAX_LISTED = 10;

export interface SamplingRequest {
  temperature: number | undefined;
  topP: number | undefined;
  /** undefined = disabled (0, -1, or ≥ vocab). */
  topK: number | undefined;
  minP: number | undefined;
  /** A safe integer only (JSON cannot carry larger int64 values exactly). */
  seed: number | undefined;
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number | undefined;
  /** undefined = the caller picks the default (chat: remaining context bounded by the cap; completions: 16). */
  maxTokens: number | undefined;
  minTokens: number;
  /** Literal stop strings, 0..maxStops. */
  stop: string[];
  stopTokenIds: number[];
  n: number;
  logprobs: boolean;
  topLogprobs: number;
  /** Token id → bias, clamped to [-100, 100]. */
  logitBias: Map<number, number>;
  ignoreEos: boolean;
  stream: boolean;
  includeUsage: boolean;
  user: string | undefined;
}

export type ToolChoice = 'none' | 'auto' | 'required' | { name: string };

export interface ChatRequest extends SamplingRequest {
  kind: 'chat';
  model: string;
  /** Reshaped for the template: assistant tool calls are in the text, tool results are named text parts. */
  messages: ChatMessage[];
  /** undefined when absent, empty, or dropped by `tool_choice: "none"`. */
  tools: unknown[] | undefined;
  toolChoice: ToolChoice | undefined;
}

export interface CompletionRequest extends SamplingRequest {
  kind: 'completion';
  model: string;
  prompt: string | number[];
  echo: boolean;
}

export interface ParseContext {
  limits: ServerLimits;
  vocabSize: number;
}

// --- small readers ------------------------------------------------------------------------------------------------

type Obj = Record<string, unknown>;

function isObject(v: unknown): v is Obj {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** 'null', 'array', or the typeof name: what a message says was found. */
function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function fail(message: string, param: string | null): never {
  throw badRequest(message, param);
}

/** An own field; `null` counts as absent. */
function field(o: Obj, key: string): unknown {
  if (!Object.hasOwn(o, key)) return undefined;
  const v = o[key];
  return v === null ? undefined : v;
}

/** A short echo for list items, so that ten of them fit in one message. */
function brief(v: unknown): string {
  const s = echo(v);
  return s.length <= 40 ? s : `${s.slice(0, 39)}…`;
}

function listProblems(what: string, problems: string[], total: number, param: string): never {
  const more = total > problems.length ? `; and ${total - problems.length} more` : '';
  fail(`${what}: ${problems.join('; ')}${more}`, param);
}

function num(o: Obj, key: string): number | undefined {
  const v = field(o, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(`${key} must be a number, got ${kind(v)}`, key);
  return v;
}

function int(o: Obj, key: string): number | undefined {
  const v = field(o, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'number') fail(`${key} must be an integer, got ${kind(v)}`, key);
  if (!Number.isInteger(v)) fail(`${key} must be an integer, got ${echo(v)}`, key);
  return v;
}

function bool(o: Obj, key: string): boolean | undefined {
  const v = field(o, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') fail(`${key} must be a boolean, got ${kind(v)}`, key);
  return v;
}

function str(o: Obj, key: string): string | undefined {
  const v = field(o, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') fail(`${key} must be a string, got ${kind(v)}`, key);
  return v;
}

/** Checks lo ≤ v ≤ hi (or lo < v when `loOpen`). */
function range(key: string, v: number | undefined, lo: number, hi: number, loOpen = false): void {
  if (v === undefined) return;
  if (loOpen ? v > lo && v <= hi : v >= lo && v <= hi) return;
  fail(`${key} must be in ${loOpen ? '(' : '['}${lo}, ${hi}], got ${v}`, key);
}

function isTokenId(v: unknown, vocabSize: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < vocabSize;
}

/** An array of token ids in [0, vocab); all bad entries are reported together (V8). */
function tokenIds(v: unknown[], vocabSize: number, param: string): number[] {
  const problems: string[] = [];
  let bad = 0;
  v.forEach((id, i) => {
    if (isTokenId(id, vocabSize)) return;
    bad++;
    if (problems.length < MAX_LISTED) problems.push(`${param}[${i}] = ${brief(id)}`);
  });
  if (bad > 0) listProblems(`${param} must contain integer token ids in [0, ${vocabSize})`, problems, bad, param);
  return v as number[];
}

// --- body ---------------------------------------------------------------------------------------------------------

/**
 * Content-Type check (415 unless application/json, parameters such as charset allowed), strict UTF-8 decoding and
 * JSON parsing (400 with the parser's message, bounded). The result is a plain object or a 400.
 */
export function parseJsonBody(raw: Buffer, contentType: string | undefined): unknown {
  const mediaType = contentType?.split(';')[0].trim().toLowerCase();
  if (mediaType !== 'application/json') throw unsupportedMediaType(contentType);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    fail('request body is not valid UTF-8', null);
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    // V10: nesting deep enough to overflow the parser is bad input, not a server fault.
    if (e instanceof RangeError) fail('invalid JSON body: nested too deeply', null);
    // V8's messages quote a short excerpt of the input; cut them anyway (E2).
    const msg = e instanceof Error ? e.message : String(e);
    fail(`invalid JSON body: ${msg.length <= 200 ? msg : `${msg.slice(0, 199)}…`}`, null);
  }
  if (!isObject(body)) fail(`request body must be a JSON object, got ${kind(body)}`, null);
  return body;
}

// --- sampling fields (both endpoints) -------------------------------------------------------------------------------

function parseStop(o: Obj, limits: ServerLimits): string[] {
  const v = field(o, 'stop');
  if (v === undefined) return [];
  let list: unknown[];
  if (typeof v === 'string') list = [v];
  else if (Array.isArray(v)) list = v;
  else fail(`stop must be a string or an array of strings, got ${kind(v)}`, 'stop');
  if (list.length > limits.maxStops) fail(`stop may have at most ${limits.maxStops} strings, got ${list.length}`, 'stop');
  return list.map((s, i) => {
    const at = typeof v === 'string' ? 'stop' : `stop[${i}]`;
    if (typeof s !== 'string') fail(`${at} must be a string, got ${kind(s)}`, 'stop');
    if (s === '') fail(`${at} must not be empty`, 'stop');
    if (s.length > limits.maxStopLength) {
      fail(`${at} is ${s.length} characters long; the limit is ${limits.maxStopLength}`, 'stop');
    }
    return s;
  });
}

function parseLogitBias(o: Obj, ctx: ParseContext): Map<number, number> {
  const bias = new Map<number, number>();
  const v = field(o, 'logit_bias');
  if (v === undefined) return bias;
  if (!isObject(v)) fail(`logit_bias must be an object mapping token ids to numbers, got ${kind(v)}`, 'logit_bias');
  const keys = Object.keys(v);
  if (keys.length > ctx.limits.maxLogitBias) {
    fail(`logit_bias has ${keys.length} entries; the limit is ${ctx.limits.maxLogitBias}`, 'logit_bias');
  }
  const problems: string[] = [];
  let bad = 0;
  for (const key of keys) {
    const value = v[key];
    let problem: string | undefined;
    // Decimal digits only: no sign, no exponent, no whitespace, so every accepted key names exactly one id.
    if (!/^\d{1,15}$/.test(key) || Number(key) >= ctx.vocabSize) {
      problem = `key ${brief(key)} is not a token id in [0, ${ctx.vocabSize})`;
    } else if (typeof value !== 'number' || !Number.isFinite(value)) {
      problem = `key ${brief(key)} has a ${kind(value)} value, expected a number`;
    }
    if (problem !== undefined) {
      bad++;
      if (problems.length < MAX_LISTED) problems.push(problem);
      continue;
    }
    bias.set(Number(key), Math.min(100, Math.max(-100, value as number)));
  }
  if (bad > 0) listProblems(`logit_bias has ${bad} invalid ${bad === 1 ? 'entry' : 'entries'}`, problems, bad, 'logit_bias');
  return bias;
}

function parseSampling(o: Obj, ctx: ParseContext, endpoint: 'chat' | 'completion'): SamplingRequest {
  const { limits, vocabSize } = ctx;

  const temperature = num(o, 'temperature');
  range('temperature', temperature, 0, 2);
  const topP = num(o, 'top_p');
  range('top_p', topP, 0, 1, true);
  let topK = int(o, 'top_k');
  if (topK !== undefined && topK < -1) fail(`top_k must be ≥ -1 (0 or -1 disables), got ${topK}`, 'top_k');
  // Keeping all the vocabulary or more is the same as no top-k.
  if (topK !== undefined && (topK <= 0 || topK >= vocabSize)) topK = undefined;
  const minP = num(o, 'min_p');
  range('min_p', minP, 0, 1);
  const presencePenalty = num(o, 'presence_penalty') ?? 0;
  range('presence_penalty', presencePenalty, -2, 2);
  const frequencyPenalty = num(o, 'frequency_penalty') ?? 0;
  range('frequency_penalty', frequencyPenalty, -2, 2);
  const repetitionPenalty = num(o, 'repetition_penalty');
  if (repetitionPenalty !== undefined && !(repetitionPenalty > 0)) {
    fail(`repetition_penalty must be > 0, got ${repetitionPenalty}`, 'repetition_penalty');
  }

  // JSON.parse rounds integers beyond 2^53, so int64 values outside the safe range cannot be honoured exactly.
  const seedRaw = field(o, 'seed');
  if (seedRaw !== undefined && typeof seedRaw !== 'number') fail(`seed must be an integer, got ${kind(seedRaw)}`, 'seed');
  if (seedRaw !== undefined && !Number.isSafeInteger(seedRaw)) {
    fail(`seed must be an integer in [-(2^53-1), 2^53-1], got ${echo(seedRaw)}`, 'seed');
  }
  const seed = seedRaw as number | undefined;

  const n = int(o, 'n') ?? 1;
  const maxN = Math.min(limits.maxN, MAX_N_HARD_CAP);
  if (n < 1 || n > maxN) fail(`n must be in [1, ${maxN}], got ${n}`, 'n');

  const maxTokensField = int(o, 'max_tokens');
  const maxCompletionTokens = endpoint === 'chat' ? int(o, 'max_completion_tokens') : undefined;
  for (const [key, v] of [['max_tokens', maxTokensField], ['max_completion_tokens', maxCompletionTokens]] as const) {
    if (v !== undefined && (v < 1 || v > limits.maxTokensCap)) {
      fail(`${key} must be in [1, ${limits.maxTokensCap}], got ${v}`, key);
    }
  }
  if (maxTokensField !== undefined && maxCompletionTokens !== undefined && maxTokensField !== maxCompletionTokens) {
    fail(
      `max_tokens (${maxTokensField}) and max_completion_tokens (${maxCompletionTokens}) differ; give one of them`,
      'max_completion_tokens',
    );
  }
  const maxTokens = maxCompletionTokens ?? maxTokensField;
  const minTokens = int(o, 'min_tokens') ?? 0;
  range('min_tokens', minTokens, 0, limits.maxTokensCap);
  if (maxTokens !== undefined && minTokens > maxTokens) {
    fail(`min_tokens (${minTokens}) must not exceed max_tokens (${maxTokens})`, 'min_tokens');
  }

  const stop = parseStop(o, limits);
  const stopIdsRaw = field(o, 'stop_token_ids');
  let stopTokenIds: number[] = [];
  if (stopIdsRaw !== undefined) {
    if (!Array.isArray(stopIdsRaw)) fail(`stop_token_ids must be an array, got ${kind(stopIdsRaw)}`, 'stop_token_ids');
    if (stopIdsRaw.length > MAX_STOP_TOKEN_IDS) {
      fail(`stop_token_ids may have at most ${MAX_STOP_TOKEN_IDS} ids, got ${stopIdsRaw.length}`, 'stop_token_ids');
    }
    stopTokenIds = tokenIds(stopIdsRaw, vocabSize, 'stop_token_ids').slice();
  }

  let logprobs: boolean;
  let topLogprobs = 0;
  if (endpoint === 'chat') {
    logprobs = bool(o, 'logprobs') ?? false;
    const top = int(o, 'top_logprobs');
    if (top !== undefined) {
      range('top_logprobs', top, 0, limits.maxTopLogprobs);
      if (!logprobs) fail('top_logprobs requires logprobs: true', 'top_logprobs');
      topLogprobs = top;
    }
  } else {
    // Legacy completions: `logprobs` is the number of alternatives (0 = only the chosen token's logprob).
    const lp = int(o, 'logprobs');
    range('logprobs', lp, 0, Math.min(LEGACY_MAX_LOGPROBS, limits.maxTopLogprobs));
    logprobs = lp !== undefined;
    topLogprobs = lp ?? 0;
  }

  const logitBias = parseLogitBias(o, ctx);
  const ignoreEos = bool(o, 'ignore_eos') ?? false;
  const stream = bool(o, 'stream') ?? false;
  let includeUsage = false;
  const streamOptions = field(o, 'stream_options');
  if (streamOptions !== undefined) {
    if (!stream) fail('stream_options is only allowed when stream is true', 'stream_options');
    if (!isObject(streamOptions)) fail(`stream_options must be an object, got ${kind(streamOptions)}`, 'stream_options');
    const iu = field(streamOptions, 'include_usage');
    if (iu !== undefined && typeof iu !== 'boolean') {
      fail(`stream_options.include_usage must be a boolean, got ${kind(iu)}`, 'stream_options');
    }
    includeUsage = iu === true;
  }
  const user = str(o, 'user');

  return {
    temperature, topP, topK, minP, seed, presencePenalty, frequencyPenalty, repetitionPenalty, maxTokens, minTokens,
    stop, stopTokenIds, n, logprobs, topLogprobs, logitBias, ignoreEos, stream, includeUsage, user,
  };
}

function parseModel(o: Obj): string {
  const v = field(o, 'model');
  if (v === undefined) fail('model is required', 'model');
  if (typeof v !== 'string') fail(`model must be a string, got ${kind(v)}`, 'model');
  return v;
}

/** Fields of features this server does not have: refused rather than ignored. */
function refuseUnsupported(o: Obj, fields: readonly string[]): void {
  for (const key of fields) {
    if (field(o, key) !== undefined) fail(`${key} is not supported`, key);
  }
}

// --- chat ---------------------------------------------------------------------------------------------------------

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

function contentError(at: string, v: unknown): never {
  fail(`${at}.content must be a string or an array of text parts, got ${kind(v)}`, 'messages');
}

function missingContent(at: string, m: Obj): never {
  if (Object.hasOwn(m, 'content')) contentError(at, null);
  fail(`${at}.content is required`, 'messages');
}

/** String content as is; text parts as fresh `{type: 'text', text}` parts. `text` is all of it joined. */
function parseContent(raw: unknown, at: string): { content: string | ChatContentPart[]; text: string } {
  if (typeof raw === 'string') return { content: raw, text: raw };
  if (!Array.isArray(raw)) contentError(at, raw);
  const parts = raw.map((part: unknown, j): ChatContentPart => {
    const where = `${at}.content[${j}]`;
    if (!isObject(part)) fail(`${where} must be an object, got ${kind(part)}`, 'messages');
    const type = field(part, 'type');
    if (typeof type !== 'string') fail(`${where}.type must be a string, got ${kind(type)}`, 'messages');
    if (type !== 'text') fail(`${where}: unsupported content part type ${echo(type)}; only "text" is supported`, 'messages');
    const text = field(part, 'text');
    if (typeof text !== 'string') fail(`${where}.text must be a string, got ${kind(text)}`, 'messages');
    return { type: 'text', text };
  });
  return { content: parts, text: parts.map((p) => p.text).join('') };
}

interface FunctionCall {
  id: string;
  name: string;
  arguments: string;
}

function parseAssistantToolCalls(raw: unknown, at: string): FunctionCall[] {
  if (!Array.isArray(raw)) fail(`${at}.tool_calls must be an array, got ${kind(raw)}`, 'messages');
  if (raw.length > MAX_TOOL_CALLS_PER_MESSAGE) {
    fail(`${at}.tool_calls may have at most ${MAX_TOOL_CALLS_PER_MESSAGE} calls, got ${raw.length}`, 'messages');
  }
  return raw.map((call: unknown, k) => {
    const where = `${at}.tool_calls[${k}]`;
    if (!isObject(call)) fail(`${where} must be an object, got ${kind(call)}`, 'messages');
    const id = field(call, 'id');
    if (typeof id !== 'string') fail(`${where}.id must be a string, got ${kind(id)}`, 'messages');
    const type = field(call, 'type');
    if (type !== undefined && type !== 'function') fail(`${where}.type must be "function", got ${echo(type)}`, 'messages');
    const fn = field(call, 'function');
    if (!isObject(fn)) fail(`${where}.function must be an object, got ${kind(fn)}`, 'messages');
    const name = field(fn, 'name');
    if (typeof name !== 'string' || name === '') {
      fail(`${where}.function.name must be a non-empty string, got ${kind(name)}`, 'messages');
    }
    const args = field(fn, 'arguments');
    if (typeof args !== 'string') fail(`${where}.function.arguments must be a string, got ${kind(args)}`, 'messages');
    return { id, name, arguments: args };
  });
}

/**
 * V1 plus the reshaping the MiniMax template needs:
 *  - an assistant turn's `tool_calls` become a `<tool_calls>` block appended to its text (the template prints
 *    only text parts, so the calls would otherwise vanish from the conversation);
 *  - a tool result becomes `{role: 'tool', content: [{type: 'text', name, text}]}`, `name` being the called
 *    function's (looked up by `tool_call_id` among earlier assistant calls), else the message's `name`, else the id:
 *    the template prints `tool name: <name>`.
 * The total text is bounded by `maxPromptChars` (V5) as it is read.
 */
function parseMessages(raw: unknown, limits: ServerLimits): ChatMessage[] {
  if (raw === undefined) fail('messages is required', 'messages');
  if (!Array.isArray(raw)) fail(`messages must be an array, got ${kind(raw)}`, 'messages');
  if (raw.length === 0) fail('messages must not be empty', 'messages');
  if (raw.length > MAX_MESSAGES) fail(`messages may have at most ${MAX_MESSAGES} entries, got ${raw.length}`, 'messages');

  const callNames = new Map<string, string>();
  let chars = 0;
  const count = (s: string): void => {
    chars += s.length;
    if (chars > limits.maxPromptChars) {
      fail(`messages are longer than the limit of ${limits.maxPromptChars} characters`, 'messages');
    }
  };

  return raw.map((m: unknown, i): ChatMessage => {
    const at = `messages[${i}]`;
    if (!isObject(m)) fail(`${at} must be an object, got ${kind(m)}`, 'messages');
    const role = field(m, 'role');
    if (role === undefined) fail(`${at}.role is required`, 'messages');
    if (typeof role !== 'string') fail(`${at}.role must be a string, got ${kind(role)}`, 'messages');
    if (!ROLES.has(role)) {
      fail(`${at}.role must be one of system, developer, user, assistant, tool, got ${echo(role)}`, 'messages');
    }
    const name = field(m, 'name');
    if (name !== undefined && typeof name !== 'string') fail(`${at}.name must be a string, got ${kind(name)}`, 'messages');
    const rawContent = field(m, 'content');

    if (role === 'assistant') {
      const rawCalls = field(m, 'tool_calls');
      const calls = rawCalls === undefined ? [] : parseAssistantToolCalls(rawCalls, at);
      if (calls.length === 0) {
        if (rawContent === undefined) missingContent(at, m);
        const { content, text } = parseContent(rawContent, at);
        count(text);
        return name === undefined ? { role, content } : { role, content, name };
      }
      const text = rawContent === undefined ? '' : parseContent(rawContent, at).text;
      for (const c of calls) {
        callNames.set(c.id, c.name);
        count(c.name);
        count(c.arguments);
      }
      const block = formatToolCalls(calls);
      count(text);
      const content = text === '' ? block : `${text}${text.endsWith('\n') ? '' : '\n'}${block}`;
      return name === undefined ? { role, content } : { role, content, name };
    }

    if (rawContent === undefined) missingContent(at, m);
    const { content, text } = parseContent(rawContent, at);
    count(text);
    if (role !== 'tool') return name === undefined ? { role, content } : { role, content, name };

    const id = field(m, 'tool_call_id');
    if (id === undefined) fail(`${at}.tool_call_id is required for tool messages`, 'messages');
    if (typeof id !== 'string') fail(`${at}.tool_call_id must be a string, got ${kind(id)}`, 'messages');
    const toolName = callNames.get(id) ?? name ?? id;
    return { role, content: [{ type: 'text', name: toolName, text }], tool_call_id: id };
  });
}

function parseTools(o: Obj): unknown[] | undefined {
  const v = field(o, 'tools');
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) fail(`tools must be an array, got ${kind(v)}`, 'tools');
  if (v.length > MAX_TOOLS) fail(`tools may have at most ${MAX_TOOLS} entries, got ${v.length}`, 'tools');
  v.forEach((t: unknown, i) => {
    const at = `tools[${i}]`;
    if (!isObject(t)) fail(`${at} must be an object, got ${kind(t)}`, 'tools');
    const type = field(t, 'type');
    if (type !== 'function') fail(`${at}.type must be "function", got ${type === undefined ? 'none' : echo(type)}`, 'tools');
    const fn = field(t, 'function');
    if (!isObject(fn)) fail(`${at}.function must be an object, got ${kind(fn)}`, 'tools');
    const name = field(fn, 'name');
    if (typeof name !== 'string' || name === '' || name.length > 256) {
      fail(`${at}.function.name must be a string of 1 to 256 characters, got ${brief(name)}`, 'tools');
    }
    const description = field(fn, 'description');
    if (description !== undefined && typeof description !== 'string') {
      fail(`${at}.function.description must be a string, got ${kind(description)}`, 'tools');
    }
    const parameters = field(fn, 'parameters');
    if (parameters !== undefined && !isObject(parameters)) {
      fail(`${at}.function.parameters must be an object, got ${kind(parameters)}`, 'tools');
    }
  });
  return v.length === 0 ? undefined : v;
}

function toolName(t: unknown): string {
  return ((t as Obj).function as Obj).name as string;
}

function parseToolChoice(o: Obj, tools: unknown[] | undefined): ToolChoice | undefined {
  const v = field(o, 'tool_choice');
  if (v === undefined) return undefined;
  let choice: ToolChoice;
  if (v === 'none' || v === 'auto' || v === 'required') {
    choice = v;
  } else if (isObject(v) && field(v, 'type') === 'function' && isObject(field(v, 'function')) &&
    typeof field(field(v, 'function') as Obj, 'name') === 'string') {
    choice = { name: field(field(v, 'function') as Obj, 'name') as string };
  } else {
    fail(
      `tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}, got ${brief(v)}`,
      'tool_choice',
    );
  }
  if (choice !== 'none' && choice !== 'auto' && tools === undefined) {
    fail('tool_choice requires tools', 'tool_choice');
  }
  if (typeof choice === 'object' && !tools!.some((t) => toolName(t) === choice.name)) {
    fail(`tool_choice names the function ${echo(choice.name)}, which is not in tools`, 'tool_choice');
  }
  return choice;
}

/** V11: no request-supplied templates, and no template kwargs (the allowlist is empty). */
function refuseTemplates(o: Obj): void {
  if (field(o, 'chat_template') !== undefined) fail('request chat templates are disabled', 'chat_template');
  const kwargs = field(o, 'chat_template_kwargs');
  if (kwargs === undefined) return;
  if (!isObject(kwargs)) fail(`chat_template_kwargs must be an object, got ${kind(kwargs)}`, 'chat_template_kwargs');
  if (Object.hasOwn(kwargs, 'chat_template')) fail('request chat templates are disabled', 'chat_template_kwargs');
  const keys = Object.keys(kwargs);
  if (keys.length > 0) {
    fail(`chat_template_kwargs ${keys.slice(0, MAX_LISTED).map(brief).join(', ')} not allowed`, 'chat_template_kwargs');
  }
}

const CHAT_UNSUPPORTED = [
  'functions',
  'function_call',
  'prompt_logprobs',
  'structured_outputs',
  'guided_json',
  'guided_regex',
  'guided_choice',
  'guided_grammar',
] as const;

export function parseChatRequest(body: unknown, ctx: ParseContext): ChatRequest {
  if (!isObject(body)) fail(`request body must be a JSON object, got ${kind(body)}`, null);
  const model = parseModel(body);
  refuseTemplates(body);
  refuseUnsupported(body, CHAT_UNSUPPORTED);
  const responseFormat = field(body, 'response_format');
  if (responseFormat !== undefined) {
    if (!isObject(responseFormat)) fail(`response_format must be an object, got ${kind(responseFormat)}`, 'response_format');
    const type = field(responseFormat, 'type');
    if (type !== 'text') fail(`response_format ${brief(type)} is not supported; only {"type": "text"}`, 'response_format');
  }
  const messages = parseMessages(field(body, 'messages'), ctx.limits);
  let tools = parseTools(body);
  const toolChoice = parseToolChoice(body, tools);
  if (toolChoice === 'none') tools = undefined;
  const sampling = parseSampling(body, ctx, 'chat');
  return { kind: 'chat', model, messages, tools, toolChoice, ...sampling };
}

// --- completions --------------------------------------------------------------------------------------------------

function parsePrompt(raw: unknown, ctx: ParseContext): string | number[] {
  if (raw === undefined) fail('prompt is required', 'prompt');
  let v = raw;
  if (Array.isArray(v) && v.length > 0 && (typeof v[0] === 'string' || Array.isArray(v[0]))) {
    // A batch of prompts: only a batch of one is accepted (one request = one prompt × n choices).
    if (v.length > 1) fail('only one prompt per request is supported', 'prompt');
    v = v[0];
  }
  if (typeof v === 'string') {
    if (v === '') fail('prompt must not be empty', 'prompt');
    checkPromptChars(v, ctx.limits, 'prompt');
    return v;
  }
  if (!Array.isArray(v)) fail(`prompt must be a string or an array of token ids, got ${kind(v)}`, 'prompt');
  if (v.length === 0) fail('prompt must not be empty', 'prompt');
  if (v.length > ctx.limits.maxPromptChars) {
    fail(`prompt has ${v.length} tokens; the limit is ${ctx.limits.maxPromptChars}`, 'prompt');
  }
  return tokenIds(v, ctx.vocabSize, 'prompt').slice();
}

export function parseCompletionRequest(body: unknown, ctx: ParseContext): CompletionRequest {
  if (!isObject(body)) fail(`request body must be a JSON object, got ${kind(body)}`, null);
  const model = parseModel(body);
  refuseUnsupported(body, ['suffix', 'prompt_logprobs', 'guided_json', 'guided_regex', 'guided_choice', 'guided_grammar']);
  const prompt = parsePrompt(field(body, 'prompt'), ctx);
  const echoPrompt = bool(body, 'echo') ?? false;
  const sampling = parseSampling(body, ctx, 'completion');
  const bestOf = int(body, 'best_of');
  if (bestOf !== undefined && bestOf !== sampling.n) {
    fail(`best_of must equal n (${sampling.n}) when given, got ${bestOf}`, 'best_of');
  }
  // V7: prompt logprobs (echo + logprobs) are never streamed.
  if (echoPrompt && sampling.logprobs && sampling.stream) {
    fail('echo with logprobs is not supported with stream: true', 'logprobs');
  }
  return { kind: 'completion', model, prompt, echo: echoPrompt, ...sampling };
}

// --- length errors (V5, §4) ---------------------------------------------------------------------------------------

/** V5: the cheap character-count guard, before tokenizing. `param` is 'messages' or 'prompt'. */
export function checkPromptChars(text: string, limits: ServerLimits, param = 'prompt'): void {
  if (text.length > limits.maxPromptChars) {
    fail(`${param} is ${text.length} characters long; the limit is ${limits.maxPromptChars}`, param);
  }
}

const CONTEXT_CODE = 'context_length_exceeded';

/**
 * prompt + max_tokens > max_model_len. Clients pattern-match "maximum context length is" to truncate and retry,
 * so the message starts exactly as OpenAI's.
 */
export function contextLengthError(maxModelLen: number, promptTokens: number, maxTokens: number): HttpError {
  return new HttpError(
    400,
    `This model's maximum context length is ${maxModelLen} tokens. However, you requested ` +
      `${promptTokens + maxTokens} tokens (${promptTokens} in the messages, ${maxTokens} in the completion). ` +
      'Please reduce the length of the messages or completion.',
    { param: 'max_tokens', code: CONTEXT_CODE },
  );
}

/** The prompt alone leaves no room for one generated token (prompt_tokens ≥ max_model_len). */
export function promptTooLongError(
  maxModelLen: number,
  promptTokens: number,
  param: 'messages' | 'prompt' = 'messages',
): HttpError {
  return new HttpError(
    400,
    `This model's maximum context length is ${maxModelLen} tokens. However, your ${param} resulted in ` +
      `${promptTokens} tokens, which leaves no room for the completion. Please reduce the length of the ${param}.`,
    { param, code: CONTEXT_CODE },
  );
}

/** §4: max_tokens > max_model_len on its own, checked before tokenizing. */
export function maxTokensTooLargeError(maxModelLen: number, maxTokens: number): HttpError {
  return new HttpError(
    400,
    `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${maxTokens} tokens ` +
      'in the completion alone. Please reduce max_tokens.',
    { param: 'max_tokens', code: CONTEXT_CODE },
  );
}
