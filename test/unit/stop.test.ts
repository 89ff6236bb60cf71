/**
 * StopStringMatcher (src/engine/stop.ts, SERVING.md V6): a stop string split over many pushes is never partially
 * released; text before it is released; the output ends exactly before the first occurrence of the earliest stop;
 * several stops, a stop that is a prefix of another; no stops = passthrough; flush releases held text when no stop
 * occurred; surrogate pairs are never split between released and held text; stops are literal (no regex). A
 * randomised check compares every chunking of random text against a reference model of the streaming semantics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StopStringMatcher } from '../../src/engine/stop.js';

/** Pushes every chunk, then flushes; returns the released pieces (flush last) and the matcher. */
function run(stops: string[], chunks: string[]): { pieces: string[]; text: string; m: StopStringMatcher } {
  const m = new StopStringMatcher(stops);
  const pieces = chunks.map((c) => m.push(c));
  pieces.push(m.flush());
  return { pieces, text: pieces.join(''), m };
}

/** Splits into code points (never inside a surrogate pair). */
const chars = (s: string): string[] => Array.from(s);

function isHigh(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
}
function isLow(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}
function assertNoSplitPair(pieces: string[], what: string): void {
  for (const p of pieces) {
    if (p.length === 0) continue;
    assert.ok(!isHigh(p.charCodeAt(p.length - 1)), `${what}: piece ${JSON.stringify(p)} ends with a high surrogate`);
    assert.ok(!isLow(p.charCodeAt(0)), `${what}: piece ${JSON.stringify(p)} starts with a low surrogate`);
  }
}

/**
 * Reference for the streaming semantics: after each chunk, the text so far is searched; at the first chunk after
 * which some stop occurs, the output is the text before the earliest occurrence among the stops. No stop: all of it.
 */
function reference(stops: string[], chunks: string[]): { text: string; stopped: boolean } {
  let acc = '';
  for (const c of chunks) {
    acc += c;
    let cut = -1;
    for (const s of stops) {
      const i = acc.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) return { text: acc.slice(0, cut), stopped: true };
  }
  return { text: acc, stopped: false };
}

test('a stop string split over many pushes is never partially released; the text before it is', () => {
  const stops = ['STOP'];
  const m = new StopStringMatcher(stops);
  let released = '';
  for (const c of chars('hello world, STOP and more')) {
    released += m.push(c);
    // at every point, the released text must not end in a non-empty prefix of the stop string
    for (let k = 1; k < 'STOP'.length; k++) assert.ok(!released.endsWith('STOP'.slice(0, k)), `released ${JSON.stringify(released)} ends in a partial stop`);
    assert.ok(!released.includes('STOP'));
  }
  assert.equal(released, 'hello world, ');
  assert.equal(m.done, true);
  assert.equal(m.push('more text'), '', 'pushes after the stop are ignored');
  assert.equal(m.flush(), '');

  // the text before a stop is released as soon as it can no longer be part of a match (hold back len − 1)
  const m2 = new StopStringMatcher(['STOP']);
  assert.equal(m2.push('abcdefg'), 'abcd');
  assert.equal(m2.push('S'), 'e');
  assert.equal(m2.push('T'), 'f');
  assert.equal(m2.push('O'), 'g');
  assert.equal(m2.push('P'), '');
  assert.equal(m2.done, true);

  // a near miss (a prefix of the stop that does not complete) is released once disproven
  const r = run(['STOP'], chars('xSTOxSTyS'));
  assert.equal(r.text, 'xSTOxSTyS');
  assert.equal(r.m.done, false);
});

test('the output ends exactly before the first occurrence of the earliest stop', () => {
  // one push holding both stops: the one that starts first wins, regardless of list order
  for (const stops of [['world', 'lo w'], ['lo w', 'world']]) {
    const r = run(stops, ['hello world']);
    assert.equal(r.text, 'hel');
    assert.equal(r.m.done, true);
  }
  // a stop occurring twice: cut at the first
  assert.equal(run(['ab'], ['xxabyyab']).text, 'xx');
  assert.equal(run(['ab'], chars('xxabyyab')).text, 'xx');
  // stop at the very start: empty output
  assert.equal(run(['he'], chars('hello')).text, '');
  // stop at the very end
  assert.equal(run(['lo'], chars('hello')).text, 'hel');
  // several stop strings, only one occurring
  assert.equal(run(['\n\n', 'END', '###'], chars('line one\nline two END tail')).text, 'line one\nline two ');
  // streamed: the stop that completes first ends generation (the longer one never completes)
  assert.equal(run(['abcd', 'c'], chars('xabcd')).text, 'xab');
  // within one push both complete: the earliest start wins
  assert.equal(run(['abcd', 'c'], ['xabcd']).text, 'x');
});

test('a stop string that is a prefix of another', () => {
  for (const stops of [['ab', 'abc'], ['abc', 'ab']]) {
    assert.equal(run(stops, chars('xxabc')).text, 'xx');
    assert.equal(run(stops, ['xxabc']).text, 'xx');
    assert.equal(run(stops, chars('xxaXbc')).text, 'xxaXbc');
  }
  for (const stops of [['\n', '\n\n'], ['\n\n', '\n']]) {
    assert.equal(run(stops, ['para one', '\n', '\n', 'two']).text, 'para one');
  }
  // overlap: the held-back text must include the start of a longer stop that shares a suffix with a shorter one
  assert.equal(run(['aab'], chars('xaaab')).text, 'xa');
});

test('no stop strings: passthrough, nothing held', () => {
  const m = new StopStringMatcher([]);
  for (const c of ['abc', '', '😀', 'd\uD83D', '\uDE00e']) assert.equal(m.push(c), c);
  assert.equal(m.flush(), '');
  assert.equal(m.done, false);
});

test('flush releases held text when no stop occurred', () => {
  const m = new StopStringMatcher(['STOP', 'xy']);
  assert.equal(m.push('hello ST'), 'hello');
  assert.equal(m.done, false);
  assert.equal(m.flush(), ' ST');
  assert.equal(m.flush(), '', 'a second flush releases nothing');
  // text shorter than the hold-back is released only by flush
  const m2 = new StopStringMatcher(['abcdef']);
  assert.equal(m2.push('ab'), '');
  assert.equal(m2.push('c'), '');
  assert.equal(m2.flush(), 'abc');
  // after a stop, flush releases nothing
  const m3 = new StopStringMatcher(['b']);
  assert.equal(m3.push('abc'), 'a');
  assert.equal(m3.flush(), '');
});

test('surrogate pairs are never split between released and held text', () => {
  // hold back 1: 'x😀' would release 2 UTF-16 units, which would cut the emoji in half
  const m = new StopStringMatcher(['ab']);
  assert.equal(m.push('x😀'), 'x');
  assert.equal(m.push('y'), '😀');
  assert.equal(m.flush(), 'y');

  const emoji = '😀🎉👍🏽𝄞';
  for (const stops of [['ab'], ['abc'], ['abcd'], ['a'], ['🎉x'], ['x🎉'], ['😀😀😀']]) {
    for (const text of [`${emoji}${emoji}`, `a${emoji}b${emoji}c`, `${emoji}x🎉`, `z😀😀😀`]) {
      // char by char and in one push
      for (const chunks of [chars(text), [text], chars(text).reduce<string[]>((acc, c, i) => (i % 2 ? (acc[acc.length - 1] += c, acc) : [...acc, c]), [])]) {
        const r = run(stops, chunks);
        assertNoSplitPair(r.pieces, `${JSON.stringify(stops)} over ${JSON.stringify(chunks)}`);
        assert.equal(r.text, reference(stops, chunks).text, `${JSON.stringify(stops)} over ${JSON.stringify(chunks)}`);
      }
    }
  }
  // a stop string that is itself an emoji
  assert.equal(run(['🎉'], chars('ab😀🎉cd')).text, 'ab😀');
});

test('stop strings are literal, never regular expressions', () => {
  assert.equal(run(['.*'], chars('abc')).text, 'abc');
  assert.equal(run(['.*'], chars('abc.*def')).text, 'abc');
  assert.equal(run(['('], chars('f(x)')).text, 'f');
  assert.equal(run(['('], chars('fx)')).text, 'fx)');
  assert.equal(run(['$'], chars('line\nnext')).text, 'line\nnext');
  assert.equal(run(['$'], chars('cost $5')).text, 'cost ');
  assert.equal(run(['^a'], chars('abc')).text, 'abc');
  assert.equal(run(['^a'], chars('x^abc')).text, 'x');
  assert.equal(run(['a+'], chars('aaa')).text, 'aaa');
  assert.equal(run(['\\d'], chars('1\\d')).text, '1');
  assert.equal(run(['[ab]'], chars('a b [ab]')).text, 'a b ');
  assert.equal(run(['$&'], chars('x$&y')).text, 'x');
});

test('randomised: any chunking of random text matches the reference streaming semantics', () => {
  let s = 12345;
  const rnd = (): number => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 2 ** 32);
  const alphabet = ['a', 'b', 'c', '\n', ' ', '😀', '🎉', '.'];
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  let stoppedCount = 0;
  for (let trial = 0; trial < 1500; trial++) {
    const len = 1 + Math.floor(rnd() * 30);
    const cps = Array.from({ length: len }, () => pick(alphabet));
    const stops = Array.from({ length: Math.floor(rnd() * 4) }, () => Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => pick(alphabet)).join(''));
    // chunk at code-point boundaries (as the incremental detokenizer does)
    const chunks: string[] = [];
    for (let i = 0; i < cps.length; ) {
      const k = 1 + Math.floor(rnd() * 4);
      chunks.push(cps.slice(i, i + k).join(''));
      i += k;
    }
    const want = reference(stops, chunks);
    const r = run(stops, chunks);
    const what = `stops ${JSON.stringify(stops)} chunks ${JSON.stringify(chunks)}`;
    assert.equal(r.text, want.text, what);
    assert.equal(r.m.done, want.stopped, what);
    assertNoSplitPair(r.pieces, what);
    // what was released at any point is a prefix of the final output: no character of the stop occurrence (a
    // partial stop string) ever went out early, and nothing is taken back
    let released = '';
    for (const p of r.pieces) {
      released += p;
      assert.ok(want.text.startsWith(released), `${what}: released ${JSON.stringify(released)} is not a prefix of ${JSON.stringify(want.text)}`);
    }
    if (want.stopped) stoppedCount++;
  }
  assert.ok(stoppedCount > 300, `only ${stoppedCount} trials hit a stop string`);
});
