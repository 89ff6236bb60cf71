/**
 * One HTTP request's generation: `n` sequences submitted to the engine, each turned into text on the HTTP thread
 * (incremental detokenizer → literal stop strings → optional tool-call hold-back) and reported as deltas, so the
 * streamed deltas concatenate to the non-streamed text (S4, S10, V6). Stop strings end a sequence here: the engine
 * is told to abort it and the choice finishes with "stop".
 */

import type { EngineRequest, SampledToken } from '../engine/scheduler.js';
import { StopStringMatcher } from '../engine/stop.js';
import type { Tokenizer } from '../tokenizer/index.js';
import type { Engine } from './engine-client.js';
import { ToolCallStreamFilter, type ToolCall } from './tool-calls.js';

export type ChoiceFinishReason = 'stop' | 'length' | 'tool_calls';

export interface TokenInfo {
  readonly id: number;
  readonly logprob: number;
  readonly top: readonly { readonly id: number; readonly logprob: number }[];
}

export interface ChoiceDelta {
  readonly index: number;
  readonly text: string;
  /** Tokens behind this delta, with logprobs (only when logprobs were requested). */
  readonly tokens: readonly TokenInfo[];
}

export interface ChoiceEnd {
  readonly index: number;
  readonly finishReason: ChoiceFinishReason;
  /** Text released at the end (held-back characters, or content after tool-call parsing). */
  readonly text: string;
  readonly tokens: readonly TokenInfo[];
  readonly toolCalls: readonly ToolCall[];
  readonly completionTokens: number;
}

export interface RunEvents {
  /** A sequence left the queue (first time for the request: queue time ends). */
  onScheduled(): void;
  onDelta(d: ChoiceDelta): void;
  onEnd(e: ChoiceEnd): void;
  /** A sequence failed: the whole request fails (the other sequences are aborted). */
  onError(err: Error): void;
}

export interface RunSpec {
  readonly prompt: readonly number[];
  readonly n: number;
  readonly request: Omit<EngineRequest, 'prompt' | 'sampling'> & { readonly sampling: Omit<EngineRequest['sampling'], 'seed'> & { readonly seed?: number } };
  readonly stop: readonly string[];
  /** Hold back and parse `<tool_calls>` blocks (chat with tools). */
  readonly parseTools: boolean;
}

let toolCallCounter = 0;
function newToolCallId(): string {
  return `call_${Date.now().toString(36)}${(toolCallCounter++).toString(36)}`;
}

class Choice {
  readonly decoder;
  readonly stops: StopStringMatcher;
  readonly tools: ToolCallStreamFilter | undefined;
  readonly stopIds: ReadonlySet<number>;
  generated = 0;
  ended = false;
  pendingTokens: TokenInfo[] = [];
  abort: () => void = () => {};

  constructor(
    readonly index: number,
    tokenizer: Tokenizer,
    stop: readonly string[],
    parseTools: boolean,
    stopTokenIds: readonly number[],
  ) {
    this.decoder = tokenizer.createDecoder({ skipSpecialTokens: true });
    this.stops = new StopStringMatcher(stop);
    this.tools = parseTools ? new ToolCallStreamFilter(newToolCallId) : undefined;
    this.stopIds = new Set(stopTokenIds);
  }

  /** Text that a new token releases (after UTF-8 completion, stop strings and tool-call hold-back). */
  push(id: number): string {
    if (this.stopIds.has(id)) return ''; // the stop token itself is not part of the text
    const text = this.stops.push(this.decoder.push(id));
    return this.tools ? this.tools.push(text) : text;
  }

  /** The rest of the text at the end, and any tool calls. */
  finish(): { text: string; toolCalls: ToolCall[] } {
    let text = this.stops.done ? '' : this.stops.push(this.decoder.flush()) + this.stops.flush();
    if (!this.tools) return { text, toolCalls: [] };
    text = this.tools.push(text);
    const end = this.tools.finish();
    return { text: text + end.content, toolCalls: end.toolCalls };
  }
}

/**
 * Submits the request's sequences. Returns an abort function (client gone, shutdown) that stops them all and frees
 * their caches; after it, no more events fire.
 */
export function startRun(engine: Engine, tokenizer: Tokenizer, spec: RunSpec, events: RunEvents): () => void {
  let failed = false;
  let scheduled = false;
  const choices: Choice[] = [];
  const baseSeed = spec.request.sampling.seed ?? Math.floor(Math.random() * 2 ** 48);
  const abortAll = (): void => {
    failed = true;
    for (const c of choices) if (!c.ended) {
      c.ended = true;
      c.abort();
    }
  };
  for (let i = 0; i < spec.n; i++) {
    const choice = new Choice(i, tokenizer, spec.stop, spec.parseTools, spec.request.stopTokenIds);
    choices.push(choice);
    const request: EngineRequest = {
      ...spec.request,
      prompt: spec.prompt,
      // Choices of one request draw from different streams; a given seed still replays the whole response.
      sampling: { ...spec.request.sampling, seed: baseSeed + i },
    };
    const end = (finishReason: ChoiceFinishReason): void => {
      if (choice.ended || failed) return;
      choice.ended = true;
      const rest = choice.finish();
      const reason = rest.toolCalls.length > 0 ? 'tool_calls' : finishReason;
      events.onEnd({ index: i, finishReason: reason, text: rest.text, tokens: takeTokens(choice), toolCalls: rest.toolCalls, completionTokens: choice.generated });
    };
    const handle = engine.submit(request, {
      onScheduled: () => {
        if (!scheduled && !failed) {
          scheduled = true;
          events.onScheduled();
        }
      },
      onToken: (t: SampledToken) => {
        if (choice.ended || failed) return;
        choice.generated++;
        if (t.logprob !== undefined) choice.pendingTokens.push({ id: t.id, logprob: t.logprob, top: t.top ?? [] });
        const text = choice.push(t.id);
        if (choice.stops.done) {
          // A stop string: the text before it is final, the sequence ends here.
          choice.abort();
          if (text) events.onDelta({ index: i, text, tokens: takeTokens(choice) });
          end('stop');
          return;
        }
        if (text || choice.pendingTokens.length > 0) events.onDelta({ index: i, text, tokens: takeTokens(choice) });
      },
      onFinish: (reason) => end(reason),
      onError: (err) => {
        if (failed) return;
        abortAll();
        events.onError(err);
      },
    });
    choice.abort = handle.abort;
    if (failed) break; // submit reported an error synchronously
  }
  return abortAll;
}

function takeTokens(c: Choice): TokenInfo[] {
  const t = c.pendingTokens;
  c.pendingTokens = [];
  return t;
}
