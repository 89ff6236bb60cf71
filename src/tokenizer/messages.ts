/**
 * Chat messages before the template sees them (SERVING.md T4, MODEL.md §3): validation with errors naming the
 * field, string content → [{type: 'text', text}], user/system parts merged into one (the MiniMax template reads
 * content[0].text), tool parts named, and the walk over every caller string used by the special-token policy.
 */

import { InvalidArgumentError } from '../util/errors.js';
import type { ChatContentPart, ChatMessage } from './tokenizer.js';

/** Messages and tools nested deeper than this are refused. */
export const MAX_VALUE_DEPTH = 64;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}


export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

function badMessage(message: string): never {
  throw new InvalidArgumentError(message, { param: 'messages' });
}

export function tooDeep(param: string): never {
  throw new InvalidArgumentError(`${param} is nested more than ${MAX_VALUE_DEPTH} levels deep`, { param });
}

export function normalizeMessages(messages: readonly ChatMessage[]): Record<string, unknown>[] {
  if (!Array.isArray(messages)) badMessage(`messages must be an array, got ${describe(messages)}`);
  return messages.map((m: unknown, i) => {
    if (!isObject(m)) badMessage(`messages[${i}] must be an object, got ${describe(m)}`);
    if (typeof m.role !== 'string') badMessage(`messages[${i}].role must be a string, got ${describe(m.role)}`);
    // OpenAI's newer name for the system role; the MiniMax template only knows "system" and would drop it silently.
    const role = m.role === 'developer' ? 'system' : m.role;
    const raw = m.content;
    const parts: { text: string; name?: string }[] = [];
    if (typeof raw === 'string') {
      parts.push({ text: raw });
    } else if (Array.isArray(raw)) {
      raw.forEach((part: unknown, j) => {
        const where = `messages[${i}].content[${j}]`;
        if (!isObject(part)) badMessage(`${where} must be an object, got ${describe(part)}`);
        if (typeof part.type !== 'string') badMessage(`${where}.type must be a string, got ${describe(part.type)}`);
        if (part.type !== 'text') badMessage(`${where}: unsupported content part type ${JSON.stringify(part.type)}`);
        if (typeof part.text !== 'string') badMessage(`${where}.text must be a string, got ${describe(part.text)}`);
        if (part.name !== undefined && typeof part.name !== 'string') {
          badMessage(`${where}.name must be a string, got ${describe(part.name)}`);
        }
        parts.push(typeof part.name === 'string' ? { text: part.text, name: part.name } : { text: part.text });
      });
    } else if (raw !== null && raw !== undefined) {
      badMessage(`messages[${i}].content must be a string, an array of content parts or null, got ${describe(raw)}`);
    }

    let content: ChatContentPart[];
    if (role === 'user' || role === 'system') {
      content = [{ type: 'text', text: parts.map((p) => p.text).join('') }];
    } else if (role === 'tool') {
      const fallback = typeof m.name === 'string' ? m.name : typeof m.tool_call_id === 'string' ? m.tool_call_id : '';
      content = parts.map((p) => ({ type: 'text', name: p.name ?? fallback, text: p.text }));
    } else {
      content = parts.map((p) => ({ type: 'text', text: p.text }));
    }
    return { ...m, role, content };
  });
}

export function checkTools(tools: readonly unknown[] | undefined): readonly unknown[] | undefined {
  if (tools === undefined || tools === null) return undefined;
  if (!Array.isArray(tools)) throw new InvalidArgumentError(`tools must be an array, got ${describe(tools)}`, { param: 'tools' });
  return tools;
}

/** Calls `visit` on every string (values and object keys) inside `value`. */
export function walkStrings(value: unknown, visit: (s: string) => void, param: string, depth: number): void {
  if (typeof value === 'string') {
    visit(value);
    return;
  }
  if (value === null || typeof value !== 'object') return;
  if (depth >= MAX_VALUE_DEPTH) tooDeep(param);
  if (Array.isArray(value)) {
    for (const v of value) walkStrings(v, visit, param, depth + 1);
    return;
  }
  for (const [k, v] of Object.entries(value)) {
    visit(k);
    walkStrings(v, visit, param, depth + 1);
  }
}
