/**
 * Literal stop strings over streamed text (SERVING.md V6/T7): a stop string is never a regex, the output ends
 * just before the first occurrence, and no prefix of a stop string is ever released early — the last
 * max(len(stop)) − 1 characters are held back until they can no longer start a match.
 */

export class StopStringMatcher {
  private readonly holdBack: number;
  /** Text received but not yet released. */
  private pending = '';
  private stopped = false;

  constructor(private readonly stops: readonly string[]) {
    this.holdBack = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
  }

  /** True once a stop string was seen; later pushes are ignored. */
  get done(): boolean {
    return this.stopped;
  }

  /** Adds text; returns what can be released now. */
  push(text: string): string {
    if (this.stopped) return '';
    if (this.stops.length === 0) return text;
    this.pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      const out = this.pending.slice(0, cut);
      this.pending = '';
      return out;
    }
    let release = this.pending.length - this.holdBack;
    if (release <= 0) return '';
    // Never split a UTF-16 surrogate pair between released and held text.
    const code = this.pending.charCodeAt(release - 1);
    if (code >= 0xd800 && code <= 0xdbff) release--;
    const out = this.pending.slice(0, release);
    this.pending = this.pending.slice(release);
    return out;
  }

  /** End of generation: releases what was held back (it holds no complete stop string). */
  flush(): string {
    const out = this.stopped ? '' : this.pending;
    this.pending = '';
    return out;
  }
}
