/**
 * Tokenizer regex safety (SERVING.md T6): tokenizer.json's Split / Replace patterns run on a backtracking engine,
 * so a pattern with a nested quantifier is refused at load instead of hanging on hostile input.
 */

/** Deeper JSON than this is not walked (a tokenizer.json is a few levels deep). */
const MAX_VALUE_DEPTH = 64;


/**
 * Looks for a nested quantifier in a regex (Oniguruma / JS syntax): a group repeated more than once (`*`, `+`,
 * `{n,}`, `{n,m}` with m > 1) whose body contains a variable-length repetition (`*`, `+`, `{n,}`, `{n,m}` with
 * m > n and m > 1). Such a group can match the same text in exponentially many ways, which a backtracking
 * engine explores (CWE-1333). Optional parts (`?`) and fixed counts (`{3}`) inside a repeated group are allowed,
 * since they do not create that ambiguity and the common split patterns rely on them. Patterns this scanner cannot
 * follow (unbalanced brackets, unknown group syntax) are reported too: refusing is the safe answer.
 *
 * Not detected (left to the known-pattern tests): overlapping alternatives such as `(a|a)*`, and backreferences.
 *
 * @returns a one-line description of the problem, or undefined when the pattern is acceptable.
 */
export function findNestedQuantifier(pattern: string): string | undefined {
  interface Frame {
    start: number;
    /** The group body contains a variable-length repetition (directly or in a nested group). */
    inner: boolean;
  }
  type Last = { kind: 'atom' } | { kind: 'group'; frame: Frame } | null;
  const stack: Frame[] = [{ start: -1, inner: false }];
  const n = pattern.length;
  let last: Last = null;
  let i = 0;
  while (i < n) {
    const c = pattern[i];
    if (c === '\\') {
      i = skipEscape(pattern, i);
      last = { kind: 'atom' };
      continue;
    }
    if (c === '[') {
      const after = skipClass(pattern, i);
      if (after < 0) return `unterminated character class at offset ${i}`;
      i = after;
      last = { kind: 'atom' };
      continue;
    }
    if (c === '(') {
      let j = i + 1;
      if (pattern[j] === '?') {
        const k = pattern[j + 1];
        if (k === '#') {
          // (?#comment)
          const close = pattern.indexOf(')', j);
          if (close < 0) return `unterminated comment group at offset ${i}`;
          i = close + 1;
          continue;
        }
        const flagsOnly = /^\?[a-zA-Z]*(?:-[a-zA-Z]*)?\)/.exec(pattern.slice(j, j + 40));
        if (flagsOnly !== null) {
          // (?i) changes flags for the rest of the group; it is not an atom.
          i = j + flagsOnly[0].length;
          continue;
        }
        if (k === ':' || k === '=' || k === '!' || k === '>') j += 2;
        else if (k === '<' && (pattern[j + 2] === '=' || pattern[j + 2] === '!')) j += 3;
        else if (k === '<' || k === "'" || (k === 'P' && pattern[j + 2] === '<')) {
          const close = pattern.indexOf(k === "'" ? "'" : '>', j + 2);
          if (close < 0) return `unterminated group name at offset ${i}`;
          j = close + 1;
        } else {
          const flagged = /^\?[a-zA-Z]*(?:-[a-zA-Z]*)?:/.exec(pattern.slice(j, j + 40));
          if (flagged === null) return `unsupported group syntax at offset ${i}`;
          j += flagged[0].length;
        }
      }
      stack.push({ start: i, inner: false });
      last = null;
      i = j;
      continue;
    }
    if (c === ')') {
      if (stack.length === 1) return `unbalanced ')' at offset ${i}`;
      const frame = stack.pop() as Frame;
      if (frame.inner) stack[stack.length - 1].inner = true;
      last = { kind: 'group', frame };
      i++;
      continue;
    }
    if (c === '|') {
      last = null;
      i++;
      continue;
    }
    const q = readQuantifier(pattern, i);
    if (q === undefined) {
      last = { kind: 'atom' };
      i++;
      continue;
    }
    if (last === null) return `quantifier without a target at offset ${i}`;
    const repeats = q.max > 1;
    const variable = q.max > q.min && q.max > 1;
    if (last.kind === 'group' && last.frame.inner && repeats) {
      const groupText = pattern.slice(last.frame.start, q.end);
      return `nested quantifier ${JSON.stringify(shorten(groupText))} at offset ${last.frame.start}`;
    }
    if (variable) stack[stack.length - 1].inner = true;
    last = null;
    i = q.end;
  }
  if (stack.length !== 1) return `unbalanced '(' at offset ${stack[stack.length - 1].start}`;
  return undefined;
}

function shorten(s: string): string {
  return s.length <= 40 ? s : `${s.slice(0, 37)}...`;
}

/** Index just past the escape sequence starting at `i` (a backslash). */
function skipEscape(p: string, i: number): number {
  const k = p[i + 1];
  if ((k === 'p' || k === 'P' || k === 'u' || k === 'x' || k === 'o') && p[i + 2] === '{') {
    const close = p.indexOf('}', i + 3);
    return close < 0 ? p.length : close + 1;
  }
  if (k === 'k' && p[i + 2] === '<') {
    const close = p.indexOf('>', i + 3);
    return close < 0 ? p.length : close + 1;
  }
  return Math.min(i + 2, p.length);
}

/**
 * Index just past the character class starting at `i` ('['), or -1 if it is not closed. Follows Oniguruma, which
 * tokenizers uses: a ']' right after '[' or '[^' is literal, and '[' inside a class opens a nested class.
 */
function skipClass(p: string, i: number): number {
  let j = i + 1;
  if (p[j] === '^') j++;
  if (p[j] === ']') j++;
  while (j < p.length) {
    const c = p[j];
    if (c === '\\') j = skipEscape(p, j);
    else if (c === '[') {
      const after = skipClass(p, j);
      if (after < 0) return -1;
      j = after;
    } else if (c === ']') return j + 1;
    else j++;
  }
  return -1;
}

/** The quantifier starting at `i` (with its lazy `?` / possessive `+` suffix), or undefined. */
function readQuantifier(p: string, i: number): { min: number; max: number; end: number } | undefined {
  const c = p[i];
  let min: number;
  let max: number;
  let end: number;
  if (c === '*' || c === '+' || c === '?') {
    min = c === '+' ? 1 : 0;
    max = c === '?' ? 1 : Infinity;
    end = i + 1;
  } else if (c === '{') {
    const m = /^\{(\d*)(?:(,)(\d*))?\}/.exec(p.slice(i, i + 24));
    // `{` that does not form a bound is a literal.
    if (m === null || (m[1] === '' && m[3] === undefined) || (m[1] === '' && m[3] === '')) return undefined;
    min = m[1] === '' ? 0 : Number(m[1]);
    max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
    end = i + m[0].length;
  } else {
    return undefined;
  }
  if (p[end] === '?' || p[end] === '+') end++;
  return { min, max, end };
}

/** Calls `visit(regex, jsonPath)` for every `pattern.Regex` in a tokenizer.json component tree. */
export function forEachRegex(value: unknown, where: string, visit: (regex: string, where: string) => void, depth = 0): void {
  if (depth > MAX_VALUE_DEPTH || value === null || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    value.forEach((v, k) => forEachRegex(v, `${where}[${k}]`, visit, depth + 1));
    return;
  }
  for (const [key, v] of Object.entries(value)) {
    if (key === 'pattern' && v !== null && typeof v === 'object' && typeof (v as { Regex?: unknown }).Regex === 'string') {
      visit((v as { Regex: string }).Regex, `${where}.pattern.Regex`);
    } else {
      forEachRegex(v, `${where}.${key}`, visit, depth + 1);
    }
  }
}
