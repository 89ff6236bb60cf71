/**
 * Tool calls in the MiniMax-01 text format, both ways.
 *
 * The chat template tells the model to answer with
 *
 *     <tool_calls>
 *     {"name": "f", "arguments": {"x": 1}}
 *     {"name": "g", "arguments": {}}
 *     </tool_calls>
 *
 * - `parseToolCalls` turns generated text into OpenAI `tool_calls` plus the remaining content;
 * - `ToolCallStreamFilter` does the same while streaming: the markup is held back and never streamed as content;
 * - `formatToolCalls` writes an earlier assistant turn's `tool_calls` back into this format, because the template
 *   prints only the text parts of assistant messages.
 */

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export const TOOL_CALLS_OPEN = '<tool_calls>';
export const TOOL_CALLS_CLOSE = '</tool_calls>';

/**
 * JSON with Python's default separators (`", "`, `": "`), i.e. what the template's `tojson` writes for the tool
 * definitions, so that replayed calls look like the format the model was shown.
 */
export function templateJson(v: unknown, depth = 0): string {
  // JSON.parse accepts any nesting, but a recursive writer would overflow the stack on a hostile value.
  if (depth > MAX_JSON_DEPTH) throw new RangeError(`value nested more than ${MAX_JSON_DEPTH} levels deep`);
  if (Array.isArray(v)) return `[${v.map((x) => templateJson(x === undefined ? null : x, depth + 1)).join(', ')}]`;
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}: ${templateJson(x, depth + 1)}`).join(', ')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/** Deepest value `templateJson` writes. */
export const MAX_JSON_DEPTH = 64;

/**
 * The block for an assistant turn's calls: one `{"name": ..., "arguments": ...}` line per call. `arguments` is the
 * OpenAI JSON string; it is written as the object it encodes when it parses, else as the string itself.
 */
export function formatToolCalls(calls: readonly { name: string; arguments: string }[]): string {
  const lines = calls.map((c) => {
    let args: string;
    try {
      args = templateJson(JSON.parse(c.arguments));
    } catch {
      args = JSON.stringify(c.arguments); // not JSON (or absurdly deep): keep the string
    }
    return `{"name": ${JSON.stringify(c.name)}, "arguments": ${args}}`;
  });
  return `${TOOL_CALLS_OPEN}\n${lines.join('\n')}\n${TOOL_CALLS_CLOSE}`;
}

/**
 * Top-level `{...}` spans of `body`, found with a brace counter that skips JSON strings, so an object may span
 * lines and braces inside string values do not count. An unterminated object at the end is returned as is (it
 * will fail to parse).
 */
function objectSpans(body: string): string[] {
  const spans: string[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      if (depth > 0) inString = true;
    } else if (c === '{') {
      if (depth === 0) start = i;
      depth++;
    } else if (c === '}' && depth > 0) {
      depth--;
      if (depth === 0) spans.push(body.slice(start, i + 1));
    }
  }
  if (depth > 0) spans.push(body.slice(start));
  return spans;
}

/** One call from one JSON object, or undefined when it is not `{"name": string, "arguments"?: ...}`. */
function toCall(span: string, newId: () => string): ToolCall | undefined {
  let v: unknown;
  try {
    v = JSON.parse(span);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  const name = Object.hasOwn(o, 'name') ? o.name : undefined;
  if (typeof name !== 'string' || name === '') return undefined;
  const raw = Object.hasOwn(o, 'arguments') ? o.arguments : undefined;
  // OpenAI's `arguments` is a JSON string: objects are serialised, a string the model wrote is kept as is.
  const args = raw === undefined || raw === null ? '{}' : typeof raw === 'string' ? raw : JSON.stringify(raw);
  return { id: newId(), type: 'function', function: { name, arguments: args } };
}

/**
 * Splits generated text into content and tool calls. Every `<tool_calls>` block is parsed (a missing closing tag
 * at the end of the text is tolerated: generation may stop there); objects that do not parse or lack a name are
 * skipped. When no block yields a call, the text is returned unchanged as content. Otherwise content is the text
 * outside the blocks, trimmed, or null when that is empty.
 */
export function parseToolCalls(text: string, newId: () => string): { content: string | null; toolCalls: ToolCall[] } {
  const toolCalls: ToolCall[] = [];
  let outside = '';
  let pos = 0;
  while (pos < text.length) {
    const open = text.indexOf(TOOL_CALLS_OPEN, pos);
    if (open < 0) break;
    outside += text.slice(pos, open);
    const bodyStart = open + TOOL_CALLS_OPEN.length;
    const close = text.indexOf(TOOL_CALLS_CLOSE, bodyStart);
    const bodyEnd = close < 0 ? text.length : close;
    for (const span of objectSpans(text.slice(bodyStart, bodyEnd))) {
      const call = toCall(span, newId);
      if (call !== undefined) toolCalls.push(call);
    }
    pos = close < 0 ? text.length : close + TOOL_CALLS_CLOSE.length;
  }
  if (toolCalls.length === 0) return { content: text, toolCalls };
  outside += text.slice(pos);
  const content = outside.trim();
  return { content: content === '' ? null : content, toolCalls };
}

/** Length of the longest suffix of `s` that is a proper prefix of `tag`. */
function partialTagSuffix(s: string, tag: string): number {
  for (let k = Math.min(tag.length - 1, s.length); k > 0; k--) {
    if (s.endsWith(tag.slice(0, k))) return k;
  }
  return 0;
}

/**
 * Streaming counterpart of `parseToolCalls`. `push` returns the content that is safe to stream now; text from the
 * first `<tool_calls>` on is held back, and so is a trailing prefix of that tag (`<tool_`) and trailing whitespace
 * (which `parseToolCalls` trims off content before a block). `finish` parses the whole text and returns the rest of
 * the content (what was not streamed yet) and the calls, so that streamed + `finish().content` equals the
 * non-streamed content (S4), except for leading whitespace that was streamed before a block turned up.
 */
export class ToolCallStreamFilter {
  #text = '';
  #emitted = 0;
  #inBlock = false;

  constructor(private readonly newId: () => string) {}

  push(text: string): string {
    this.#text += text;
    if (this.#inBlock) return '';
    // A tag cannot start before #emitted: that text was released only once it was known not to begin the tag.
    const open = this.#text.indexOf(TOOL_CALLS_OPEN, Math.max(0, this.#emitted - TOOL_CALLS_OPEN.length));
    let end: number;
    if (open >= 0) {
      this.#inBlock = true;
      end = open;
    } else {
      end = this.#text.length - partialTagSuffix(this.#text, TOOL_CALLS_OPEN);
    }
    while (end > this.#emitted && /\s/.test(this.#text[end - 1])) end--;
    if (end <= this.#emitted) return '';
    const out = this.#text.slice(this.#emitted, end);
    this.#emitted = end;
    return out;
  }

  /** The content not streamed yet ('' when none) and the tool calls. Call once, at the end of generation. */
  finish(): { content: string; toolCalls: ToolCall[] } {
    const { content, toolCalls } = parseToolCalls(this.#text, this.newId);
    const full = content ?? '';
    let streamed = this.#text.slice(0, this.#emitted);
    // `parseToolCalls` trims leading whitespace that may already have been streamed.
    if (!full.startsWith(streamed)) streamed = streamed.trimStart();
    const rest = full.startsWith(streamed) ? full.slice(streamed.length) : '';
    this.#emitted = this.#text.length;
    return { content: rest, toolCalls };
  }
}
