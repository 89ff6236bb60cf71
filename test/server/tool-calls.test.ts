/**
 * MiniMax tool-call markup (src/server/tool-calls.ts): parsing single and multiple calls, surrounding text, a missing
 * closing tag, malformed blocks, objects spanning lines; formatting an assistant turn's calls back into the markup;
 * the streaming filter never releases the markup (or a partial `<tool_` at the end of the buffer) as content and
 * agrees with the non-streamed parse for every chunking.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ToolCallStreamFilter, formatToolCalls, parseToolCalls, templateJson } from '../../src/server/tool-calls.js';

function ids(): () => string {
  let i = 0;
  return () => `call_${i++}`;
}

test('a single call', () => {
  const r = parseToolCalls('<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_calls>', ids());
  assert.equal(r.content, null);
  assert.deepEqual(r.toolCalls, [
    { id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
  ]);
});

test('several calls, surrounding text, extra whitespace', () => {
  const text =
    'Let me look.\n<tool_calls>\n  {"name": "a", "arguments": {"x": 1}}  \n\n{"name": "b", "arguments": "{\\"raw\\": true}"}\n</tool_calls>\n  Done. ';
  const r = parseToolCalls(text, ids());
  assert.equal(r.content, 'Let me look.\n\n  Done.');
  assert.deepEqual(
    r.toolCalls.map((c) => [c.id, c.function.name, c.function.arguments]),
    [['call_0', 'a', '{"x":1}'], ['call_1', 'b', '{"raw": true}']],
  );
});

test('a missing closing tag at the end; an object spanning lines; braces inside strings', () => {
  const r = parseToolCalls('<tool_calls>\n{"name": "f",\n "arguments": {"s": "a}b{c", "n": [1, {"m": 2}]}}\n', ids());
  assert.equal(r.content, null);
  assert.deepEqual(r.toolCalls.map((c) => c.function), [{ name: 'f', arguments: '{"s":"a}b{c","n":[1,{"m":2}]}' }]);
  // Absent arguments become "{}".
  assert.equal(parseToolCalls('<tool_calls>{"name": "g"}</tool_calls>', ids()).toolCalls[0].function.arguments, '{}');
});

test('malformed blocks leave the text unchanged; bad entries beside good ones are skipped', () => {
  for (const text of [
    '<tool_calls>\nnot json\n</tool_calls>',
    '<tool_calls>\n{"arguments": {}}\n</tool_calls>',
    '<tool_calls>\n{"name": 5}\n</tool_calls>',
    '<tool_calls>\n{"name": "f", "arguments": {"x": \n',
    'plain text, no calls',
    '',
  ]) {
    assert.deepEqual(parseToolCalls(text, ids()), { content: text, toolCalls: [] }, text);
  }
  const r = parseToolCalls('<tool_calls>\n{"name": "ok", "arguments": {}}\n{broken\n</tool_calls>', ids());
  assert.equal(r.toolCalls.length, 1);
  assert.equal(r.toolCalls[0].function.name, 'ok');
});

test('formatToolCalls writes the template format and round-trips through parseToolCalls', () => {
  const block = formatToolCalls([
    { name: 'a', arguments: '{"x": [1, 2], "y": {"z": null}, "u": "é"}' },
    { name: 'b', arguments: 'not json' },
  ]);
  assert.equal(
    block,
    '<tool_calls>\n{"name": "a", "arguments": {"x": [1, 2], "y": {"z": null}, "u": "é"}}\n{"name": "b", "arguments": "not json"}\n</tool_calls>',
  );
  const r = parseToolCalls(block, ids());
  assert.deepEqual(r.toolCalls.map((c) => [c.function.name, c.function.arguments]), [
    ['a', '{"x":[1,2],"y":{"z":null},"u":"é"}'],
    ['b', 'not json'],
  ]);
  assert.equal(templateJson({ a: [1, 'b', true], c: {} }), '{"a": [1, "b", true], "c": {}}');
});

/** Streams `chunks` through a filter; returns everything streamed and the end result. */
function stream(chunks: string[]): { streamed: string[]; end: ReturnType<ToolCallStreamFilter['finish']> } {
  const f = new ToolCallStreamFilter(ids());
  const streamed = chunks.map((c) => f.push(c));
  return { streamed, end: f.finish() };
}

test('the stream filter holds back a partial <tool_ tag and the whole block', () => {
  const { streamed, end } = stream(['Hello', ' <tool_', 'calls>\n{"name": "f", ', '"arguments": {}}\n</tool_calls>']);
  assert.deepEqual(streamed, ['Hello', '', '', '']);
  assert.equal(end.content, '');
  assert.deepEqual(end.toolCalls.map((c) => c.function), [{ name: 'f', arguments: '{}' }]);
  for (const s of streamed) assert.ok(!s.includes('<'), s);
});

test('the stream filter releases a partial tag that turns out to be text', () => {
  const { streamed, end } = stream(['a <tool', '_box> b <', 't', '']);
  assert.deepEqual(streamed, ['a', ' <tool_box> b', '', '']);
  assert.equal(end.content, ' <t');
  assert.deepEqual(end.toolCalls, []);
});

test('the stream filter releases a malformed block as content at the end', () => {
  const text = 'x <tool_calls> nope </tool_calls>';
  const { streamed, end } = stream([text]);
  assert.equal(streamed.join('') + end.content, text);
  assert.deepEqual(end.toolCalls, []);
});

test('streamed + finish() equals the non-streamed content for every 2-way and 3-way chunking', () => {
  const texts = [
    'Sure.\n<tool_calls>\n{"name": "f", "arguments": {"a": 1}}\n</tool_calls>',
    'Sure.\n<tool_calls>\n{"name": "f", "arguments": {"a": 1}}\n</tool_calls>\nAfter.',
    '<tool_calls>\n{"name": "f", "arguments": {}}\n',
    'no tools here <tool but <tools> and trailing space  ',
    'x <tool_calls> garbage',
    'Ünïcode 😀 text\n\n<tool_calls>{"name": "g", "arguments": {"q": "<tool_calls>"}}</tool_calls>',
  ];
  for (const text of texts) {
    const expected = parseToolCalls(text, ids());
    for (let i = 0; i <= text.length; i++) {
      for (let j = i; j <= text.length; j += 3) {
        const chunks = [text.slice(0, i), text.slice(i, j), text.slice(j)];
        const { streamed, end } = stream(chunks);
        const all = streamed.join('') + end.content;
        assert.equal(all, expected.content ?? '', `${JSON.stringify(text)} split at ${i}, ${j}`);
        assert.deepEqual(end.toolCalls, expected.toolCalls);
        if (expected.toolCalls.length > 0) {
          for (const s of streamed) assert.ok(!s.includes('<tool_calls>'), s);
        }
      }
    }
  }
});
