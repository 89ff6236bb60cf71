/**
 * API keys (SERVING.md A1, A4).
 *
 * Keys are kept only as SHA-256 digests. A presented bearer token is hashed and compared with every configured
 * digest using `crypto.timingSafeEqual`, without stopping at the first match: comparing equal-length digests hides
 * both the key length and how many leading characters matched, and visiting every key hides which one matched
 * (the anti-pattern is a case-insensitive `==` on the raw key).
 */

import { createHash, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '../util/errors.js';

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

// RFC 6750: the scheme is case-insensitive; the token has no whitespace.
const BEARER_RE = /^bearer[ \t]+(\S+)[ \t]*$/i;

export class ApiKeys {
  readonly #digests: readonly Buffer[];

  constructor(keys: readonly string[]) {
    for (const k of keys) {
      if (typeof k !== 'string' || k.trim() === '') {
        throw new InvalidArgumentError('API keys must be non-empty strings', { param: 'api-key' });
      }
    }
    this.#digests = keys.map(sha256);
  }

  /** False when no key is configured: the server is open. */
  get enabled(): boolean {
    return this.#digests.length > 0;
  }

  /**
   * Whether a request with this `Authorization` header may proceed: always true when no key is configured,
   * otherwise a `Bearer <token>` whose token is one of the keys.
   */
  check(authorizationHeader: string | undefined): boolean {
    if (!this.enabled) return true;
    const match = typeof authorizationHeader === 'string' ? BEARER_RE.exec(authorizationHeader) : null;
    // A missing or malformed header is still hashed and compared, so it costs the same as a wrong key.
    const presented = sha256(match?.[1] ?? '');
    let ok = 0;
    for (const d of this.#digests) ok |= timingSafeEqual(presented, d) ? 1 : 0;
    return ok === 1 && match !== null;
  }
}

/** The command line with API key values replaced by `***`, for logging (A4). */
export function redactArgs(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--api-key') {
      out.push(a);
      if (i + 1 < argv.length) {
        out.push('***');
        i++;
      }
    } else if (a.startsWith('--api-key=')) {
      out.push('--api-key=***');
    } else {
      out.push(a);
    }
  }
  return out;
}
