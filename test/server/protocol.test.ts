/**
 * Request validation (src/server/protocol.ts, SERVING.md V1–V12, §4) and the error shape (src/server/errors.ts,
 * E1–E3): every V rule has a negative case; types are checked before ranges; range edges; caps; the reshaping of
 * assistant tool calls and tool results for the MiniMax template; error bodies with all four keys; sanitising and
 * bounding; the context-length messages.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_LIMITS,
  checkPromptChars,
  contextLengthError,
  maxTokensTooLargeError,
  parseChatRequest,
  parseCompletionRequest,
  parseJsonBody,
  promptTooLongError,
  type ServerLimits,
} from '../../src/server/protocol.js';
import {
  HttpError,
  errorBody,
  modelNotFound,
  rateLimited,
  sanitizeMessage,
  toHttpError,
  unauthorized,
} from '../../src/server/errors.js';
import {
  AbortError,
  InternalError,
  InvalidArgumentError,
  TokenizerError,
} from '../../src/util/errors.js';

const VOCAB = 1000;
const ctx = { limits: DEFAULT_LIMITS, vocabSize: VOCAB };

const chat = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  model: 'm',
  messages: [{ role: 'user', content: 'hi' }],
  ...extra,
});
const completion = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  model: 'm',
  prompt: 'hello',
  ...extra,
});

/** Asserts `fn` throws an HttpError 400 with this param and a message matching `message`. */
function rejects(fn: () => unknown, param: string | null, message: RegExp | string, status = 400): HttpError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof HttpError, `expected an HttpError, got ${String(caught)}`);
  assert.equal(caught.status, status, caught.message);
  assert.equal(caught.param, param, caught.message);
  if (typeof message === 'string') assert.equal(caught.message, message);
  else assert.match(caught.message, message);
  assert.ok(caught.message.length <= 1000);
  return caught;
}

const chatRejects = (extra: Record<string, unknown>, param: string | null, message: RegExp | string): HttpError =>
  rejects(() => parseChatRequest(chat(extra), ctx), param, message);
const completionRejects = (extra: Record<string, unknown>, param: string | null, message: RegExp | string): HttpError =>
  rejects(() => parseCompletionRequest(completion(extra), ctx), param, message);

// --- body ----------------------------------------------------------------------------------------------------------

test('parseJsonBody: content type, JSON errors, non-object bodies', () => {
  const buf = (s: string): Buffer => Buffer.from(s, 'utf8');
  assert.deepEqual(parseJsonBody(buf('{"a":1}'), 'application/json'), { a: 1 });
  assert.deepEqual(parseJsonBody(buf('{"a":1}'), 'Application/JSON; charset=utf-8'), { a: 1 });
  rejects(() => parseJsonBody(buf('{}'), undefined), null, /Content-Type must be application\/json, got none/, 415);
  rejects(() => parseJsonBody(buf('{}'), 'text/plain'), null, /got "text\/plain"/, 415);
  rejects(() => parseJsonBody(buf('{}'), 'application/jsonx'), null, /Content-Type/, 415);
  rejects(() => parseJsonBody(buf('{"a":'), 'application/json'), null, /^invalid JSON body: /);
  rejects(() => parseJsonBody(buf(''), 'application/json'), null, /^invalid JSON body: /);
  const long = `{"a": "${'x'.repeat(5000)}" oops}`;
  const e = rejects(() => parseJsonBody(buf(long), 'application/json'), null, /^invalid JSON body: /);
  assert.ok(e.message.length <= 'invalid JSON body: '.length + 200);
  rejects(() => parseJsonBody(buf('[1,2]'), 'application/json'), null, 'request body must be a JSON object, got array');
  rejects(() => parseJsonBody(buf('"x"'), 'application/json'), null, 'request body must be a JSON object, got string');
  rejects(() => parseJsonBody(buf('null'), 'application/json'), null, 'request body must be a JSON object, got null');
  rejects(() => parseJsonBody(Buffer.from([0x7b, 0xff, 0x7d]), 'application/json'), null, /not valid UTF-8/);
  // Deep nesting never escapes as anything but a 400 (V10).
  const deep = '['.repeat(200_000) + ']'.repeat(200_000);
  try {
    parseJsonBody(buf(`{"a":${deep}}`), 'application/json'); // V8's parser is iterative: this may just parse
  } catch (e) {
    assert.ok(e instanceof HttpError && e.status === 400, String(e));
  }
});

test('__proto__ keys are inert', () => {
  const body = parseJsonBody(
    Buffer.from('{"model":"m","messages":[{"role":"user","content":"x","__proto__":{"role":"tool"}}],"__proto__":{"n":5}}'),
    'application/json',
  );
  const req = parseChatRequest(body, ctx);
  assert.equal(req.n, 1);
  assert.equal(req.messages[0].role, 'user');
  assert.equal(({} as Record<string, unknown>).n, undefined);
  // A __proto__ key in logit_bias is just a bad key.
  const lb = parseJsonBody(Buffer.from('{"model":"m","prompt":"x","logit_bias":{"__proto__":1}}'), 'application/json');
  rejects(() => parseCompletionRequest(lb, ctx), 'logit_bias', /"__proto__" is not a token id/);
});

// --- model and messages (V1, V2) -------------------------------------------------------------------------------------

test('a minimal chat request and its defaults', () => {
  const r = parseChatRequest(chat(), ctx);
  assert.equal(r.kind, 'chat');
  assert.equal(r.model, 'm');
  assert.deepEqual(r.messages, [{ role: 'user', content: 'hi' }]);
  assert.equal(r.n, 1);
  assert.equal(r.maxTokens, undefined);
  assert.equal(r.minTokens, 0);
  assert.equal(r.presencePenalty, 0);
  assert.equal(r.frequencyPenalty, 0);
  assert.deepEqual(r.stop, []);
  assert.deepEqual(r.stopTokenIds, []);
  assert.equal(r.logprobs, false);
  assert.equal(r.topLogprobs, 0);
  assert.equal(r.logitBias.size, 0);
  assert.equal(r.stream, false);
  assert.equal(r.includeUsage, false);
  assert.equal(r.ignoreEos, false);
  assert.equal(r.tools, undefined);
  assert.equal(r.toolChoice, undefined);
  for (const k of ['temperature', 'topP', 'topK', 'minP', 'seed', 'repetitionPenalty', 'user'] as const) {
    assert.equal(r[k], undefined, k);
  }
});

test('model: required string (V2)', () => {
  rejects(() => parseChatRequest({ messages: [{ role: 'user', content: 'x' }] }, ctx), 'model', 'model is required');
  chatRejects({ model: 5 }, 'model', 'model must be a string, got number');
  chatRejects({ model: null }, 'model', 'model is required');
  rejects(() => parseChatRequest([], ctx), null, /must be a JSON object, got array/);
});

test('messages: shape errors (V1)', () => {
  const m = (messages: unknown): HttpError => chatRejects({ messages }, 'messages', /./);
  assert.equal(m(null).message, 'messages is required');
  assert.equal(m('hi').message, 'messages must be an array, got string');
  assert.equal(m(5).message, 'messages must be an array, got number');
  assert.equal(m({}).message, 'messages must be an array, got object');
  assert.equal(m([]).message, 'messages must not be empty');
  assert.equal(m([123]).message, 'messages[0] must be an object, got number');
  assert.equal(m([null]).message, 'messages[0] must be an object, got null');
  assert.equal(m([{}]).message, 'messages[0].role is required');
  assert.equal(m([{ role: 123, content: 'x' }]).message, 'messages[0].role must be a string, got number');
  assert.match(m([{ role: 'robot', content: 'x' }]).message, /messages\[0\]\.role must be one of .* got "robot"/);
  assert.equal(m([{ role: 'user', content: 123 }]).message, 'messages[0].content must be a string or an array of text parts, got number');
  assert.equal(m([{ role: 'user', content: null }]).message, 'messages[0].content must be a string or an array of text parts, got null');
  assert.equal(m([{ role: 'user', content: {} }]).message, 'messages[0].content must be a string or an array of text parts, got object');
  assert.equal(m([{ role: 'user' }]).message, 'messages[0].content is required');
  assert.equal(m([{ role: 'user', content: [123] }]).message, 'messages[0].content[0] must be an object, got number');
  assert.equal(m([{ role: 'user', content: [{ text: 'x' }] }]).message, 'messages[0].content[0].type must be a string, got undefined');
  assert.equal(m([{ role: 'user', content: [{ type: 'text', text: 5 }] }]).message, 'messages[0].content[0].text must be a string, got number');
  assert.equal(m([{ role: 'user', content: 'x', name: 5 }]).message, 'messages[0].name must be a string, got number');
  assert.match(
    m([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }]).message,
    /^messages\[0\]\.content\[0\]: unsupported content part type "image_url"/,
  );
  assert.equal(m([{ role: 'assistant', content: null }]).message, 'messages[0].content must be a string or an array of text parts, got null');
  assert.equal(m([{ role: 'assistant' }]).message, 'messages[0].content is required');
  assert.equal(m([{ role: 'tool', content: 'r' }]).message, 'messages[0].tool_call_id is required for tool messages');
  assert.equal(m([{ role: 'tool', content: 'r', tool_call_id: 7 }]).message, 'messages[0].tool_call_id must be a string, got number');
  assert.equal(m([{ role: 'tool', content: null, tool_call_id: 'a' }]).message, 'messages[0].content must be a string or an array of text parts, got null');
  assert.match(m(Array.from({ length: 10_001 }, () => ({ role: 'user', content: 'x' }))).message, /at most 10000/);
});

test('messages: string and text-part content are accepted, parts are copied clean', () => {
  const r = parseChatRequest(
    chat({
      messages: [
        { role: 'system', content: 'sys' },
        { role: 'developer', content: [{ type: 'text', text: 'dev' }] },
        { role: 'user', content: [{ type: 'text', text: 'a', extra: 1 }, { type: 'text', text: 'b' }], name: 'bob' },
        { role: 'assistant', content: 'ok' },
      ],
    }),
    ctx,
  );
  assert.deepEqual(r.messages, [
    { role: 'system', content: 'sys' },
    { role: 'developer', content: [{ type: 'text', text: 'dev' }] },
    { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }], name: 'bob' },
    { role: 'assistant', content: 'ok' },
  ]);
});

test('messages: assistant tool_calls become a <tool_calls> block; tool results are named', () => {
  const r = parseChatRequest(
    chat({
      messages: [
        { role: 'user', content: 'weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","days":[1,2]}' } },
            { id: 'call_2', type: 'function', function: { name: 'raw', arguments: 'not json' } },
          ],
        },
        { role: 'tool', tool_call_id: 'call_1', content: 'sunny' },
        { role: 'tool', tool_call_id: 'call_2', name: 'ignored', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
        { role: 'tool', tool_call_id: 'unknown', name: 'fallback', content: 'x' },
        { role: 'tool', tool_call_id: 'lonely', content: 'y' },
        {
          role: 'assistant',
          content: 'Let me check.',
          tool_calls: [{ id: 'call_3', function: { name: 'f', arguments: '{}' } }],
        },
      ],
    }),
    ctx,
  );
  assert.deepEqual(r.messages[1], {
    role: 'assistant',
    content:
      '<tool_calls>\n' +
      '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n' +
      '{"name": "raw", "arguments": "not json"}\n' +
      '</tool_calls>',
  });
  assert.deepEqual(r.messages[2], { role: 'tool', content: [{ type: 'text', name: 'get_weather', text: 'sunny' }], tool_call_id: 'call_1' });
  assert.deepEqual(r.messages[3], { role: 'tool', content: [{ type: 'text', name: 'raw', text: 'ab' }], tool_call_id: 'call_2' });
  assert.deepEqual(r.messages[4], { role: 'tool', content: [{ type: 'text', name: 'fallback', text: 'x' }], tool_call_id: 'unknown' });
  assert.deepEqual(r.messages[5], { role: 'tool', content: [{ type: 'text', name: 'lonely', text: 'y' }], tool_call_id: 'lonely' });
  assert.equal(r.messages[6].content, 'Let me check.\n<tool_calls>\n{"name": "f", "arguments": {}}\n</tool_calls>');
});

test('messages: deeply nested tool-call arguments are kept as a string, never a stack overflow', () => {
  const deep = '['.repeat(100_000) + ']'.repeat(100_000);
  const r = parseChatRequest(
    chat({ messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'a', function: { name: 'f', arguments: deep } }] }] }),
    ctx,
  );
  assert.equal(r.messages[0].content, `<tool_calls>\n{"name": "f", "arguments": ${JSON.stringify(deep)}}\n</tool_calls>`);
});

test('messages: malformed assistant tool_calls', () => {
  const m = (tool_calls: unknown): HttpError =>
    chatRejects({ messages: [{ role: 'assistant', content: null, tool_calls }] }, 'messages', /./);
  assert.equal(m('x').message, 'messages[0].tool_calls must be an array, got string');
  assert.equal(m([5]).message, 'messages[0].tool_calls[0] must be an object, got number');
  assert.equal(m([{ function: { name: 'f', arguments: '{}' } }]).message, 'messages[0].tool_calls[0].id must be a string, got undefined');
  assert.match(m([{ id: 'a', type: 'code', function: { name: 'f', arguments: '{}' } }]).message, /type must be "function", got "code"/);
  assert.equal(m([{ id: 'a', function: 'f' }]).message, 'messages[0].tool_calls[0].function must be an object, got string');
  assert.match(m([{ id: 'a', function: { name: '', arguments: '{}' } }]).message, /function\.name must be a non-empty string/);
  assert.equal(m([{ id: 'a', function: { name: 'f', arguments: { x: 1 } } }]).message, 'messages[0].tool_calls[0].function.arguments must be a string, got object');
  // An empty tool_calls list does not excuse missing content.
  assert.match(m([]).message, /content must be a string or an array of text parts, got null/);
});

test('messages: total length is bounded before tokenizing (V5)', () => {
  const limits: ServerLimits = { ...DEFAULT_LIMITS, maxPromptChars: 10 };
  rejects(
    () => parseChatRequest(chat({ messages: [{ role: 'user', content: '123456' }, { role: 'user', content: '123456' }] }), { limits, vocabSize: VOCAB }),
    'messages',
    /longer than the limit of 10 characters/,
  );
  parseChatRequest(chat({ messages: [{ role: 'user', content: '12345' }, { role: 'user', content: '12345' }] }), { limits, vocabSize: VOCAB });
  assert.throws(() => checkPromptChars('x'.repeat(11), limits), (e: HttpError) => e.status === 400 && e.param === 'prompt');
  assert.throws(() => checkPromptChars('x'.repeat(11), limits, 'messages'), (e: HttpError) => e.param === 'messages');
  checkPromptChars('x'.repeat(10), limits);
});

// --- tools, tool_choice, unsupported features ---------------------------------------------------------------------

const weatherTool = { type: 'function', function: { name: 'get_weather', description: 'd', parameters: { type: 'object' } } };

test('tools and tool_choice', () => {
  const r = parseChatRequest(chat({ tools: [weatherTool], tool_choice: 'auto' }), ctx);
  assert.deepEqual(r.tools, [weatherTool]);
  assert.equal(r.toolChoice, 'auto');
  const named = parseChatRequest(chat({ tools: [weatherTool], tool_choice: { type: 'function', function: { name: 'get_weather' } } }), ctx);
  assert.deepEqual(named.toolChoice, { name: 'get_weather' });
  assert.equal(parseChatRequest(chat({ tools: [weatherTool], tool_choice: 'required' }), ctx).toolChoice, 'required');
  const none = parseChatRequest(chat({ tools: [weatherTool], tool_choice: 'none' }), ctx);
  assert.equal(none.tools, undefined);
  assert.equal(none.toolChoice, 'none');
  assert.equal(parseChatRequest(chat({ tools: [] }), ctx).tools, undefined);

  chatRejects({ tools: {} }, 'tools', 'tools must be an array, got object');
  chatRejects({ tools: [5] }, 'tools', 'tools[0] must be an object, got number');
  chatRejects({ tools: [{ function: { name: 'f' } }] }, 'tools', 'tools[0].type must be "function", got none');
  chatRejects({ tools: [{ type: 'function' }] }, 'tools', 'tools[0].function must be an object, got undefined');
  chatRejects({ tools: [{ type: 'function', function: { name: 5 } }] }, 'tools', /tools\[0\]\.function\.name must be a string/);
  chatRejects({ tools: [{ type: 'function', function: { name: 'f', description: 1 } }] }, 'tools', /description must be a string/);
  chatRejects({ tools: [{ type: 'function', function: { name: 'f', parameters: [] } }] }, 'tools', /parameters must be an object, got array/);
  chatRejects({ tools: Array.from({ length: 129 }, () => weatherTool) }, 'tools', /at most 128/);
  chatRejects({ tool_choice: 'sometimes', tools: [weatherTool] }, 'tool_choice', /tool_choice must be "none", "auto", "required"/);
  chatRejects({ tool_choice: 'required' }, 'tool_choice', 'tool_choice requires tools');
  chatRejects(
    { tools: [weatherTool], tool_choice: { type: 'function', function: { name: 'other' } } },
    'tool_choice',
    /names the function "other", which is not in tools/,
  );
});

test('unsupported features are refused, not ignored', () => {
  chatRejects({ response_format: { type: 'json_object' } }, 'response_format', /response_format "json_object" is not supported/);
  chatRejects({ response_format: 'json' }, 'response_format', 'response_format must be an object, got string');
  parseChatRequest(chat({ response_format: { type: 'text' } }), ctx);
  parseChatRequest(chat({ response_format: null }), ctx);
  chatRejects({ functions: [] }, 'functions', 'functions is not supported');
  chatRejects({ function_call: 'auto' }, 'function_call', 'function_call is not supported');
  chatRejects({ guided_json: {} }, 'guided_json', 'guided_json is not supported');
  completionRejects({ suffix: 'x' }, 'suffix', 'suffix is not supported');
});

test('request chat templates are refused (V11)', () => {
  chatRejects({ chat_template: '{{ 7*7 }}' }, 'chat_template', 'request chat templates are disabled');
  chatRejects({ chat_template_kwargs: { chat_template: 'x' } }, 'chat_template_kwargs', 'request chat templates are disabled');
  chatRejects({ chat_template_kwargs: { enable_thinking: true } }, 'chat_template_kwargs', /"enable_thinking" not allowed/);
  chatRejects({ chat_template_kwargs: 'x' }, 'chat_template_kwargs', 'chat_template_kwargs must be an object, got string');
  parseChatRequest(chat({ chat_template_kwargs: {} }), ctx);
});

test('unknown fields are tolerated (V10); null means absent', () => {
  const r = parseChatRequest(chat({ whatever: 1, parallel_tool_calls: true, temperature: null, n: null, stop: null }), ctx);
  assert.equal(r.temperature, undefined);
  assert.equal(r.n, 1);
  assert.deepEqual(r.stop, []);
});

// --- sampling ranges (V3) -------------------------------------------------------------------------------------------

test('types are checked before ranges (V3)', () => {
  chatRejects({ temperature: '0.5' }, 'temperature', 'temperature must be a number, got string');
  chatRejects({ temperature: true }, 'temperature', 'temperature must be a number, got boolean');
  chatRejects({ top_p: [] }, 'top_p', 'top_p must be a number, got array');
  chatRejects({ top_k: 1.5 }, 'top_k', 'top_k must be an integer, got 1.5');
  chatRejects({ top_k: '5' }, 'top_k', 'top_k must be an integer, got string');
  chatRejects({ n: '2' }, 'n', 'n must be an integer, got string');
  chatRejects({ max_tokens: 2.5 }, 'max_tokens', 'max_tokens must be an integer, got 2.5');
  chatRejects({ max_tokens: {} }, 'max_tokens', 'max_tokens must be an integer, got object');
  chatRejects({ seed: '1' }, 'seed', 'seed must be an integer, got string');
  chatRejects({ stream: 'yes' }, 'stream', 'stream must be a boolean, got string');
  chatRejects({ logprobs: 1 }, 'logprobs', 'logprobs must be a boolean, got number');
  chatRejects({ ignore_eos: 1 }, 'ignore_eos', 'ignore_eos must be a boolean, got number');
  chatRejects({ user: 1 }, 'user', 'user must be a string, got number');
  chatRejects({ presence_penalty: 'a' }, 'presence_penalty', 'presence_penalty must be a number, got string');
});

test('range edges (V3)', () => {
  const ok = (extra: Record<string, unknown>) => parseChatRequest(chat(extra), ctx);
  assert.equal(ok({ temperature: 0 }).temperature, 0);
  assert.equal(ok({ temperature: 2 }).temperature, 2);
  chatRejects({ temperature: -0.01 }, 'temperature', 'temperature must be in [0, 2], got -0.01');
  chatRejects({ temperature: 2.01 }, 'temperature', 'temperature must be in [0, 2], got 2.01');
  assert.equal(ok({ top_p: 1 }).topP, 1);
  assert.equal(ok({ top_p: 1e-9 }).topP, 1e-9);
  chatRejects({ top_p: 0 }, 'top_p', 'top_p must be in (0, 1], got 0');
  chatRejects({ top_p: 1.5 }, 'top_p', 'top_p must be in (0, 1], got 1.5');
  assert.equal(ok({ top_k: 0 }).topK, undefined);
  assert.equal(ok({ top_k: -1 }).topK, undefined);
  assert.equal(ok({ top_k: 40 }).topK, 40);
  assert.equal(ok({ top_k: VOCAB }).topK, undefined);
  chatRejects({ top_k: -2 }, 'top_k', /top_k must be ≥ -1/);
  assert.equal(ok({ min_p: 0 }).minP, 0);
  assert.equal(ok({ min_p: 1 }).minP, 1);
  chatRejects({ min_p: 1.1 }, 'min_p', 'min_p must be in [0, 1], got 1.1');
  chatRejects({ min_p: -0.1 }, 'min_p', 'min_p must be in [0, 1], got -0.1');
  for (const k of ['presence_penalty', 'frequency_penalty']) {
    ok({ [k]: -2 });
    ok({ [k]: 2 });
    chatRejects({ [k]: 2.5 }, k, `${k} must be in [-2, 2], got 2.5`);
    chatRejects({ [k]: -2.5 }, k, `${k} must be in [-2, 2], got -2.5`);
  }
  assert.equal(ok({ presence_penalty: 0.5, frequency_penalty: -0.5 }).frequencyPenalty, -0.5);
  assert.equal(ok({ repetition_penalty: 1.1 }).repetitionPenalty, 1.1);
  chatRejects({ repetition_penalty: 0 }, 'repetition_penalty', 'repetition_penalty must be > 0, got 0');
  chatRejects({ repetition_penalty: -1 }, 'repetition_penalty', 'repetition_penalty must be > 0, got -1');
});

test('seed: safe integers only (int64 min-1 / max+1 and anything past 2^53 rejected)', () => {
  const max = Number.MAX_SAFE_INTEGER;
  assert.equal(parseChatRequest(chat({ seed: max }), ctx).seed, max);
  assert.equal(parseChatRequest(chat({ seed: -max }), ctx).seed, -max);
  assert.equal(parseChatRequest(chat({ seed: 0 }), ctx).seed, 0);
  const msg = /^seed must be an integer in \[-\(2\^53-1\), 2\^53-1\]/;
  chatRejects({ seed: max + 1 }, 'seed', msg);
  chatRejects({ seed: -max - 1 }, 'seed', msg);
  chatRejects({ seed: 1.5 }, 'seed', msg);
  // What JSON.parse makes of the int64 limits ± 1.
  for (const text of ['9223372036854775808', '-9223372036854775809', '9223372036854775807', '18446744073709551616']) {
    const body = parseJsonBody(Buffer.from(`{"model":"m","messages":[{"role":"user","content":"x"}],"seed":${text}}`), 'application/json');
    rejects(() => parseChatRequest(body, ctx), 'seed', msg);
  }
});

test('n, max_tokens, max_completion_tokens, min_tokens (V3, V12)', () => {
  assert.equal(parseChatRequest(chat({ n: 16 }), ctx).n, 16);
  chatRejects({ n: 0 }, 'n', 'n must be in [1, 16], got 0');
  chatRejects({ n: 17 }, 'n', 'n must be in [1, 16], got 17');
  chatRejects({ n: 1e9 }, 'n', 'n must be in [1, 16], got 1000000000');
  const big = { limits: { ...DEFAULT_LIMITS, maxN: 10_000 }, vocabSize: VOCAB };
  assert.equal(parseChatRequest(chat({ n: 128 }), big).n, 128);
  rejects(() => parseChatRequest(chat({ n: 129 }), big), 'n', 'n must be in [1, 128], got 129');
  const cap = DEFAULT_LIMITS.maxTokensCap;
  assert.equal(parseChatRequest(chat({ max_tokens: 1 }), ctx).maxTokens, 1);
  assert.equal(parseChatRequest(chat({ max_tokens: cap }), ctx).maxTokens, cap);
  assert.equal(parseChatRequest(chat({ max_completion_tokens: 7 }), ctx).maxTokens, 7);
  assert.equal(parseChatRequest(chat({ max_completion_tokens: 7, max_tokens: 7 }), ctx).maxTokens, 7);
  chatRejects({ max_tokens: 0 }, 'max_tokens', `max_tokens must be in [1, ${cap}], got 0`);
  chatRejects({ max_tokens: cap + 1 }, 'max_tokens', `max_tokens must be in [1, ${cap}], got ${cap + 1}`);
  chatRejects({ max_completion_tokens: 0 }, 'max_completion_tokens', /max_completion_tokens must be in \[1, /);
  chatRejects({ max_completion_tokens: 5, max_tokens: 6 }, 'max_completion_tokens', /differ/);
  assert.equal(parseChatRequest(chat({ min_tokens: 5, max_tokens: 5 }), ctx).minTokens, 5);
  chatRejects({ min_tokens: 6, max_tokens: 5 }, 'min_tokens', 'min_tokens (6) must not exceed max_tokens (5)');
  chatRejects({ min_tokens: -1 }, 'min_tokens', /min_tokens must be in \[0, /);
  chatRejects({ min_tokens: cap + 1 }, 'min_tokens', /min_tokens must be in \[0, /);
});

// --- stop (V6), logprobs (V7), logit_bias and token ids (V8), stream_options (V9) ------------------------------------

test('stop (V6)', () => {
  assert.deepEqual(parseChatRequest(chat({ stop: 'END' }), ctx).stop, ['END']);
  assert.deepEqual(parseChatRequest(chat({ stop: ['a', 'b', 'c', 'd'] }), ctx).stop, ['a', 'b', 'c', 'd']);
  assert.deepEqual(parseChatRequest(chat({ stop: [] }), ctx).stop, []);
  assert.deepEqual(parseChatRequest(chat({ stop: ['.*'] }), ctx).stop, ['.*']);
  chatRejects({ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', 'stop may have at most 4 strings, got 5');
  chatRejects({ stop: '' }, 'stop', 'stop must not be empty');
  chatRejects({ stop: ['a', ''] }, 'stop', 'stop[1] must not be empty');
  chatRejects({ stop: [1] }, 'stop', 'stop[0] must be a string, got number');
  chatRejects({ stop: 5 }, 'stop', 'stop must be a string or an array of strings, got number');
  chatRejects({ stop: 'x'.repeat(257) }, 'stop', 'stop is 257 characters long; the limit is 256');
  parseChatRequest(chat({ stop: 'x'.repeat(256) }), ctx);
});

test('stop_token_ids (V8)', () => {
  assert.deepEqual(parseChatRequest(chat({ stop_token_ids: [0, VOCAB - 1] }), ctx).stopTokenIds, [0, VOCAB - 1]);
  chatRejects({ stop_token_ids: 5 }, 'stop_token_ids', 'stop_token_ids must be an array, got number');
  chatRejects(
    { stop_token_ids: [1, -1, VOCAB, 2.5, 'x'] },
    'stop_token_ids',
    'stop_token_ids must contain integer token ids in [0, 1000): stop_token_ids[1] = -1; stop_token_ids[2] = 1000; stop_token_ids[3] = 2.5; stop_token_ids[4] = "x"',
  );
  chatRejects({ stop_token_ids: Array.from({ length: 257 }, () => 1) }, 'stop_token_ids', /at most 256/);
});

test('logprobs (V7)', () => {
  const r = parseChatRequest(chat({ logprobs: true, top_logprobs: 20 }), ctx);
  assert.equal(r.logprobs, true);
  assert.equal(r.topLogprobs, 20);
  assert.equal(parseChatRequest(chat({ logprobs: true }), ctx).topLogprobs, 0);
  chatRejects({ logprobs: true, top_logprobs: 21 }, 'top_logprobs', 'top_logprobs must be in [0, 20], got 21');
  chatRejects({ logprobs: true, top_logprobs: -1 }, 'top_logprobs', 'top_logprobs must be in [0, 20], got -1');
  chatRejects({ top_logprobs: 2 }, 'top_logprobs', 'top_logprobs requires logprobs: true');
  chatRejects({ logprobs: false, top_logprobs: 0 }, 'top_logprobs', 'top_logprobs requires logprobs: true');
  // Legacy completions: an integer 0..5.
  const c = parseCompletionRequest(completion({ logprobs: 5 }), ctx);
  assert.equal(c.logprobs, true);
  assert.equal(c.topLogprobs, 5);
  const c0 = parseCompletionRequest(completion({ logprobs: 0 }), ctx);
  assert.equal(c0.logprobs, true);
  assert.equal(c0.topLogprobs, 0);
  assert.equal(parseCompletionRequest(completion({ logprobs: null }), ctx).logprobs, false);
  completionRejects({ logprobs: 6 }, 'logprobs', 'logprobs must be in [0, 5], got 6');
  completionRejects({ logprobs: true }, 'logprobs', 'logprobs must be an integer, got boolean');
  completionRejects({ logprobs: 1, echo: true, stream: true }, 'logprobs', /not supported with stream/);
});

test('logit_bias (V8): clamped, all bad keys reported together and bounded', () => {
  const r = parseChatRequest(chat({ logit_bias: { '0': 5, '999': -500, '12': 150.5 } }), ctx);
  assert.deepEqual([...r.logitBias.entries()].sort((a, b) => a[0] - b[0]), [[0, 5], [12, 100], [999, -100]]);
  const e = chatRejects({ logit_bias: { '-1': 1, abc: 2, '1000': 3, '5': 'x', '1e2': 1, ' 7': 1 } }, 'logit_bias', /./);
  assert.match(e.message, /^logit_bias has 6 invalid entries: /);
  for (const k of ['"-1"', '"abc"', '"1000"', '"1e2"', '" 7"']) assert.ok(e.message.includes(`key ${k} is not a token id in [0, 1000)`), k);
  assert.ok(e.message.includes('key "5" has a string value, expected a number'));
  const many: Record<string, number> = {};
  for (let i = 0; i < 30; i++) many[`bad${i}`] = 1;
  const e2 = chatRejects({ logit_bias: many }, 'logit_bias', /; and 20 more$/);
  assert.equal((e2.message.match(/is not a token id/g) ?? []).length, 10);
  chatRejects({ logit_bias: [1] }, 'logit_bias', 'logit_bias must be an object mapping token ids to numbers, got array');
  const tooMany: Record<string, number> = {};
  for (let i = 0; i <= DEFAULT_LIMITS.maxLogitBias; i++) tooMany[String(i)] = 1;
  chatRejects({ logit_bias: tooMany }, 'logit_bias', /has 1025 entries; the limit is 1024/);
});

test('stream and stream_options (V9)', () => {
  const r = parseChatRequest(chat({ stream: true, stream_options: { include_usage: true } }), ctx);
  assert.equal(r.stream, true);
  assert.equal(r.includeUsage, true);
  assert.equal(parseChatRequest(chat({ stream: true, stream_options: {} }), ctx).includeUsage, false);
  assert.equal(parseChatRequest(chat({ stream: true }), ctx).includeUsage, false);
  parseChatRequest(chat({ stream: false, stream_options: null }), ctx);
  chatRejects({ stream_options: { include_usage: true } }, 'stream_options', 'stream_options is only allowed when stream is true');
  chatRejects({ stream: false, stream_options: {} }, 'stream_options', 'stream_options is only allowed when stream is true');
  chatRejects({ stream: true, stream_options: 1 }, 'stream_options', 'stream_options must be an object, got number');
  chatRejects({ stream: true, stream_options: { include_usage: 'yes' } }, 'stream_options', 'stream_options.include_usage must be a boolean, got string');
});

// --- completions prompt (V8) ---------------------------------------------------------------------------------------

test('completions: prompt forms', () => {
  const p = (prompt: unknown) => parseCompletionRequest(completion({ prompt }), ctx).prompt;
  assert.equal(p('hello'), 'hello');
  assert.deepEqual(p([1, 2, 3]), [1, 2, 3]);
  assert.equal(p(['hello']), 'hello');
  assert.deepEqual(p([[4, 5]]), [4, 5]);
  const c = parseCompletionRequest(completion({ echo: true, best_of: 2, n: 2 }), ctx);
  assert.equal(c.kind, 'completion');
  assert.equal(c.echo, true);
  assert.equal(c.maxTokens, undefined);
  const bad = (prompt: unknown, message: RegExp | string): HttpError => completionRejects({ prompt }, 'prompt', message);
  bad(undefined, 'prompt is required');
  bad('', 'prompt must not be empty');
  bad([], 'prompt must not be empty');
  bad([''], 'prompt must not be empty');
  bad([[]], 'prompt must not be empty');
  bad(['a', 'b'], 'only one prompt per request is supported');
  bad([[1], [2]], 'only one prompt per request is supported');
  bad(5, 'prompt must be a string or an array of token ids, got number');
  bad({}, 'prompt must be a string or an array of token ids, got object');
  bad([['a']], /prompt\[0\] = "a"/);
  bad([1, -1, 1000, 1.5, null], 'prompt must contain integer token ids in [0, 1000): prompt[1] = -1; prompt[2] = 1000; prompt[3] = 1.5; prompt[4] = null');
  completionRejects({ best_of: 3 }, 'best_of', 'best_of must equal n (1) when given, got 3');
  completionRejects({ echo: 'yes' }, 'echo', 'echo must be a boolean, got string');
  // max_completion_tokens is a chat field; completions ignore it.
  assert.equal(parseCompletionRequest(completion({ max_completion_tokens: 0 }), ctx).maxTokens, undefined);
  const limits: ServerLimits = { ...DEFAULT_LIMITS, maxPromptChars: 4 };
  rejects(() => parseCompletionRequest(completion({ prompt: 'hello' }), { limits, vocabSize: VOCAB }), 'prompt', /5 characters long; the limit is 4/);
  rejects(() => parseCompletionRequest(completion({ prompt: [1, 2, 3, 4, 5] }), { limits, vocabSize: VOCAB }), 'prompt', /5 tokens; the limit is 4/);
});

test('echoed values are cut to 200 characters (E2)', () => {
  const e = chatRejects({ messages: [{ role: 'x'.repeat(5000), content: 'y' }] }, 'messages', /./);
  assert.ok(e.message.length < 300, String(e.message.length));
});

// --- errors (E1–E3) ----------------------------------------------------------------------------------------------------

test('errorBody has all four keys; types follow the status', () => {
  const body = errorBody(chatRejects({ temperature: 5 }, 'temperature', /./));
  assert.deepEqual(body, {
    error: { message: 'temperature must be in [0, 2], got 5', type: 'invalid_request_error', param: 'temperature', code: null },
  });
  assert.deepEqual(Object.keys(errorBody(new HttpError(500, 'x')).error), ['message', 'type', 'param', 'code']);
  const types: [number, string][] = [
    [400, 'invalid_request_error'], [404, 'invalid_request_error'], [413, 'invalid_request_error'],
    [415, 'invalid_request_error'], [401, 'authentication_error'], [429, 'rate_limit_error'],
    [500, 'server_error'], [503, 'server_error'],
  ];
  for (const [status, type] of types) assert.equal(new HttpError(status, 'x').type, type, String(status));
  assert.equal(new HttpError(400, 'x', { type: 'server_error' }).type, 'server_error');
  const rl = rateLimited(3);
  assert.equal(rl.status, 429);
  assert.equal(rl.code, 'rate_limit_exceeded');
  assert.equal(rl.headers['Retry-After'], '3');
  assert.deepEqual(errorBody(modelNotFound('gpt-9')).error, {
    message: 'The model "gpt-9" does not exist.', type: 'invalid_request_error', param: 'model', code: 'model_not_found',
  });
  assert.equal(unauthorized().status, 401);
  assert.equal(errorBody(unauthorized()).error.type, 'authentication_error');
  // Bounded to one line of at most 1000 characters.
  const long = new HttpError(400, `a\nb${'c'.repeat(5000)}`);
  assert.equal(long.message.length, 1000);
  assert.ok(!long.message.includes('\n'));
});

test('toHttpError maps library errors and hides internals', () => {
  const a = toHttpError(new InvalidArgumentError('messages[0].content must be text', { param: 'messages' }));
  assert.equal(a.status, 400);
  assert.equal(a.param, 'messages');
  assert.equal(a.message, 'messages[0].content must be text');
  const t = toHttpError(new TokenizerError('chat template render failed in /home/u/models/m/tokenizer_config.json: x', { file: 'f' }));
  assert.equal(t.status, 400);
  assert.equal(t.message, 'chat template render failed in <path>: x');
  const ab = toHttpError(new AbortError());
  assert.equal(ab.status, 503);
  assert.equal(ab.type, 'server_error');
  assert.equal(ab.message, 'request aborted');
  for (const e of [new InternalError('bug at /src/x.ts:1'), new Error('ENOENT /etc/passwd'), 'string', null, 42]) {
    const h = toHttpError(e);
    assert.equal(h.status, 500);
    assert.equal(h.type, 'server_error');
    assert.equal(h.message, 'internal server error');
  }
  const same = new HttpError(404, 'x');
  assert.equal(toHttpError(same), same);
});

test('sanitizeMessage strips paths, addresses, newlines and stack frames; bounds length', () => {
  assert.equal(
    sanitizeMessage("ENOENT: no such file or directory, open '/home/user/models/m/config.json'"),
    "ENOENT: no such file or directory, open '<path>'",
  );
  assert.equal(sanitizeMessage('failed at /opt/app/dist/src/x.js:10:5 now'), 'failed at <path> now');
  assert.equal(sanitizeMessage('see file:///srv/app/a.js:1:2'), 'see <path>');
  assert.equal(sanitizeMessage('C:\\Users\\me\\model\\w.bin missing'), '<path> missing');
  assert.equal(sanitizeMessage('segfault at 0x7ffd5e8a1c20 in kernel'), 'segfault at <addr> in kernel');
  assert.equal(sanitizeMessage('id 0x1f stays'), 'id 0x1f stays');
  assert.equal(sanitizeMessage('line one\nline two'), 'line one line two');
  assert.equal(sanitizeMessage('Error: boom\n    at f (/app/x.js:1:1)\n    at g (/app/y.js:2:2)'), 'Error: boom');
  assert.equal(sanitizeMessage('application/json and 1/2 stay'), 'application/json and 1/2 stay');
  assert.equal(sanitizeMessage('x'.repeat(5000)).length, 1000);
});

// --- context length (§4) ---------------------------------------------------------------------------------------------

test('context-length errors', () => {
  const e = contextLengthError(4096, 4000, 200);
  assert.equal(e.status, 400);
  assert.equal(e.param, 'max_tokens');
  assert.equal(e.code, 'context_length_exceeded');
  assert.ok(
    e.message.startsWith(
      "This model's maximum context length is 4096 tokens. However, you requested 4200 tokens (4000 in the messages, 200 in the completion). Please reduce the length of the messages or completion.",
    ),
  );
  const p = promptTooLongError(4096, 5000);
  assert.equal(p.param, 'messages');
  assert.equal(p.code, 'context_length_exceeded');
  assert.ok(p.message.startsWith("This model's maximum context length is 4096 tokens."));
  assert.match(p.message, /5000/);
  assert.equal(promptTooLongError(4096, 5000, 'prompt').param, 'prompt');
  const m = maxTokensTooLargeError(4096, 10000);
  assert.equal(m.param, 'max_tokens');
  assert.ok(m.message.startsWith("This model's maximum context length is 4096 tokens."));
  assert.match(m.message, /10000/);
});
