/**
 * The library's front door: `loadModel(dir)` reads config.json, the tokenizer and the safetensors weights of a
 * MiniMax-Text-01 / MiniMax-M1 checkpoint (either layout) and returns a `Model` that tokenizes, computes logits,
 * generates, streams and chats.
 *
 * @example
 *   import { loadModel } from 'lightning-moe';
 *   const model = await loadModel('./MiniMax-Text-01', { onProgress: (e) => console.log(e) });
 *   const { text } = await model.generate('The capital of France is', { maxTokens: 16, temperature: 0 });
 *   for await (const ev of model.chatStream([{ role: 'user', content: 'Hi!' }])) process.stdout.write(ev.text);
 *   model.dispose();
 */

import fs from 'node:fs/promises';
import path from 'node:path';
import { createBackend, type Device } from '../backends.js';
import { loadModelConfig, readJsonFile, type ModelConfig } from '../config/config.js';
import { MiniMax01, type CacheOptions } from '../model/minimax01.js';
import { lightningSlopes } from '../model/slopes.js';
import { loadWeights } from '../model/weights.js';
import { Tokenizer, type ChatMessage, type ChatTemplateOptions } from '../tokenizer/index.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { ConfigError, DisposedError, InvalidArgumentError, TokenizerError } from '../util/errors.js';
import { generateAll, generateStream, type GenerateOptions, type GenerationContext, type GenerationResult, type StreamEvent } from './generate.js';
import { preparePrefill } from './prefill-memory.js';
import { Session } from './session.js';
import { Scheduler, type SchedulerOptions } from './scheduler.js';

export type { Device } from '../backends.js';

export type LoadProgressEvent =
  /** The backend is chosen; `fallbackReason` says why 'auto' did not use CUDA. */
  | { readonly status: 'device'; readonly device: string; readonly name: string; readonly fallbackReason?: string }
  /** A kernel file was compiled by NVRTC (or taken from the on-disk cache). */
  | { readonly status: 'compile'; readonly file: string; readonly cached: boolean; readonly seconds: number }
  | { readonly status: 'weights'; readonly tensor: string; readonly loadedBytes: number; readonly totalBytes: number }
  | { readonly status: 'ready'; readonly totalBytes: number; readonly seconds: number };

export interface LoadModelOptions {
  /** 'cuda' (an NVIDIA GPU, bf16), 'cpu' (the fp32 reference) or 'auto' (CUDA when usable, else CPU). Default 'auto'. */
  readonly device?: Device;
  /** Called as weights stream in, then once when the model is ready. */
  readonly onProgress?: (event: LoadProgressEvent) => void;
  /** Cancels loading between chunks. */
  readonly signal?: AbortSignal;
  /**
   * Weight storage: 'bf16' (the CUDA default; on the CPU, weights are rounded to bf16 and computed in fp32, which
   * reproduces what a bf16 device sees) or 'f32' (the CPU default; not available on CUDA).
   */
  readonly weightDType?: 'bf16' | 'f32';
  /**
   * Sizes of the cache pool: `maxSequences` lightning state slots (default 256, allocated on first use) and the
   * paged KV cache in blocks of 64 tokens (`initialKvBlocks` allocated now, default 0; growth up to `maxKvBlocks`,
   * default enough for one sequence of the full context). A server sizes them once: initial = max.
   */
  readonly cache?: CacheOptions;
}

/** Defaults read from generation_config.json; explicit options win over them. */
export interface GenerationDefaults {
  readonly temperature?: number;
  readonly topK?: number;
  readonly topP?: number;
  readonly maxTokens?: number;
}

export type Prompt = string | readonly number[];

export interface ChatOptions extends GenerateOptions, Pick<ChatTemplateOptions, 'tools' | 'allowSpecialTokensInContent'> {}

export class Model {
  private disposed = false;

  /** @internal use loadModel() */
  constructor(
    /** The model directory. */
    readonly dir: string,
    readonly config: ModelConfig,
    /** undefined when the directory has no tokenizer.json: only token-id APIs work then. */
    private readonly tok: Tokenizer | undefined,
    private readonly net: MiniMax01,
    /** Token ids that end generation (MODEL.md §3 resolution order). */
    readonly eosTokenIds: readonly number[],
    readonly generationDefaults: GenerationDefaults,
  ) {}

  /** The backend the model runs on: 'cpu' or 'cuda'. */
  get device(): string {
    return this.net.backend.name;
  }

  get tokenizer(): Tokenizer {
    if (!this.tok) throw new TokenizerError(`${this.dir}: no tokenizer.json, so text input and output are unavailable (use token ids)`);
    return this.tok;
  }

  get hasTokenizer(): boolean {
    return this.tok !== undefined;
  }

  /** Text → token ids. Special-token strings become their ids unless `parseSpecialTokens` is false. */
  encode(text: string, options?: { parseSpecialTokens?: boolean }): number[] {
    return this.tokenizer.encode(text, options);
  }

  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string {
    return this.tokenizer.decode(ids, options);
  }

  /** A fresh sequence to drive by hand (prefill chunks, decode steps, inspect lightning states). */
  createSession(): Session {
    this.ensureLive();
    return new Session(this.net);
  }

  /**
   * A continuous-batching scheduler over this model's cache pool (see Scheduler): submit many requests, call
   * `run()` (or `step()`), and each sequence's tokens arrive through its listener.
   */
  createScheduler(options: SchedulerOptions = {}): Scheduler {
    this.ensureLive();
    return new Scheduler(this.net, options);
  }

  /** Lightning state slots and KV blocks in use, and the KV capacity. */
  get cacheUsage(): { slotsUsed: number; maxSequences: number; kvBlocksUsed: number; kvBlocksAllocated: number; maxKvBlocks: number } {
    const c = this.net.cache;
    return { slotsUsed: c.slotsUsed, maxSequences: c.maxSequences, kvBlocksUsed: c.kvBlocksUsed, kvBlocksAllocated: c.kvBlocksAllocated, maxKvBlocks: c.options.maxKvBlocks };
  }

  /** Logits at every position of `ids` from an empty cache: rows[t] has V entries. */
  logits(ids: readonly number[]): Float32Array[] {
    const s = this.createSession();
    try {
      this.checkIds(ids);
      const r = s.append(ids, { logits: 'all' });
      return Array.from({ length: r.rows }, (_, i) => r.row(i));
    } finally {
      s.dispose();
    }
  }

  /** Streams generated tokens and text. The last event is `{type: 'done'}` with the finish reason and usage. */
  async *stream(prompt: Prompt, options: GenerateOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    yield* this.run(this.promptIds(prompt), options);
  }

  async generate(prompt: Prompt, options: GenerateOptions = {}): Promise<GenerationResult> {
    return this.collect(this.promptIds(prompt), options);
  }

  /** Renders `messages` with the chat template (plus generation prompt) and generates the assistant's reply. */
  async chat(messages: readonly ChatMessage[], options: ChatOptions = {}): Promise<GenerationResult> {
    return this.collect(this.chatIds(messages, options), options);
  }

  async *chatStream(messages: readonly ChatMessage[], options: ChatOptions = {}): AsyncGenerator<StreamEvent, void, undefined> {
    yield* this.run(this.chatIds(messages, options), options);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.net.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private chatIds(messages: readonly ChatMessage[], options: ChatOptions): number[] {
    return this.tokenizer.encodeChat(messages, { tools: options.tools, allowSpecialTokensInContent: options.allowSpecialTokensInContent, addGenerationPrompt: true });
  }

  private promptIds(prompt: Prompt): number[] {
    if (typeof prompt === 'string') return this.encode(prompt);
    if (!Array.isArray(prompt)) throw new InvalidArgumentError('prompt must be a string or an array of token ids', { param: 'prompt' });
    this.checkIds(prompt);
    return [...prompt];
  }

  private checkIds(ids: readonly number[], param = 'ids'): void {
    const V = this.config.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new InvalidArgumentError(`token id ${id} is out of range: the vocabulary has ${V} ids [0, ${V - 1}]`, { param });
      }
    }
  }

  private withDefaults(o: GenerateOptions): GenerateOptions {
    if (o.stopTokenIds !== undefined) {
      if (!Array.isArray(o.stopTokenIds)) throw new InvalidArgumentError('stopTokenIds must be an array of token ids', { param: 'stopTokenIds' });
      this.checkIds(o.stopTokenIds, 'stopTokenIds');
    }
    const d = this.generationDefaults;
    return {
      ...o,
      temperature: o.temperature ?? d.temperature,
      topK: o.topK ?? d.topK,
      topP: o.topP ?? d.topP,
      maxTokens: o.maxTokens ?? d.maxTokens,
    };
  }

  private async *run(prompt: number[], options: GenerateOptions): AsyncGenerator<StreamEvent, void, undefined> {
    const session = this.createSession();
    try {
      yield* generateStream(this.context(session, prompt), this.withDefaults(options));
    } finally {
      session.dispose();
    }
  }

  private async collect(prompt: number[], options: GenerateOptions): Promise<GenerationResult> {
    const session = this.createSession();
    try {
      return await generateAll(this.context(session, prompt), this.withDefaults(options));
    } finally {
      session.dispose();
    }
  }

  private context(session: Session, prompt: number[]): GenerationContext {
    return {
      session,
      prompt,
      eosTokenIds: this.eosTokenIds,
      decoder: this.tok?.createDecoder({ skipSpecialTokens: true }),
      maxContext: this.config.maxPositionEmbeddings,
      preparePrefill: (contextTokens, chunk) => preparePrefill(this.net, session, contextTokens, chunk).prefillChunk,
    };
  }

  private ensureLive(): void {
    if (this.disposed) throw new DisposedError('Model');
  }
}

/** What a checkpoint directory says about the model, without its weights: enough to tokenize and render chats. */
export interface ModelInfo {
  readonly dir: string;
  readonly config: ModelConfig;
  readonly tokenizer: Tokenizer | undefined;
  readonly eosTokenIds: readonly number[];
  readonly generationDefaults: GenerationDefaults;
}

/** Reads config.json, the tokenizer files (optional) and generation_config.json of a checkpoint directory. */
export async function loadModelInfo(dir: string): Promise<ModelInfo> {
  const abs = path.resolve(dir);
  const stat = await fs.stat(abs).catch(() => undefined);
  if (!stat?.isDirectory()) throw new ConfigError(`model directory not found: ${dir}`, { file: dir });
  const config = await loadModelConfig(abs);
  let tokenizer: Tokenizer | undefined;
  if (await exists(path.join(abs, 'tokenizer.json'))) {
    tokenizer = await Tokenizer.fromDir(abs);
    if (tokenizer.vocabSize > config.vocabSize) {
      throw new TokenizerError(
        `${path.join(dir, 'tokenizer.json')}: the tokenizer has ${tokenizer.vocabSize} ids but config.json vocab_size is ${config.vocabSize}`,
        { file: path.join(abs, 'tokenizer.json') },
      );
    }
  }
  const genConfig = await readGenerationConfig(abs);
  return { dir: abs, config, tokenizer, eosTokenIds: resolveEos(genConfig.eos, config, tokenizer), generationDefaults: genConfig.defaults };
}

/** Loads a checkpoint directory: config.json, tokenizer files (optional), safetensors weights (single or sharded). */
export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<Model> {
  const started = performance.now();
  const info = await loadModelInfo(dir);
  const { config, dir: abs } = info;
  const choice = await createBackend(options.device ?? 'auto', {
    weightDType: options.weightDType,
    onCompile: options.onProgress && ((e) => options.onProgress!({ status: 'compile', ...e })),
  });
  const backend = choice.backend;
  options.onProgress?.({ status: 'device', device: backend.name, name: choice.deviceName, fallbackReason: choice.fallbackReason });

  const ckpt = await Checkpoint.open(abs);
  try {
    const weights = await loadWeights(backend, config, ckpt, {
      dtype: choice.weightDType,
      slopes: (l) => lightningSlopes(config.numHeads, l, config.numLayers),
      signal: options.signal,
      onProgress: options.onProgress && ((p) => options.onProgress!({ status: 'weights', ...p })),
    });
    const net = new MiniMax01(config, backend, weights, choice.activationDType, options.cache);
    const totalBytes = [...ckpt.tensors.values()].reduce((a, t) => a + t.byteLength, 0);
    options.onProgress?.({ status: 'ready', totalBytes, seconds: (performance.now() - started) / 1000 });
    return new Model(abs, config, info.tokenizer, net, info.eosTokenIds, info.generationDefaults);
  } finally {
    await ckpt.close();
  }
}

/** MODEL.md §3: generation_config.json eos_token_id, else config.json's, else the tokenizer's eos_token. */
function resolveEos(genEos: number[] | undefined, config: ModelConfig, tokenizer: Tokenizer | undefined): number[] {
  if (genEos && genEos.length > 0) return genEos;
  if (config.eosTokenIds.length > 0) return [...config.eosTokenIds];
  return tokenizer?.eosTokenId !== undefined ? [tokenizer.eosTokenId] : [];
}

async function readGenerationConfig(dir: string): Promise<{ eos: number[] | undefined; defaults: GenerationDefaults }> {
  const file = path.join(dir, 'generation_config.json');
  if (!(await exists(file))) return { eos: undefined, defaults: {} };
  const raw = await readJsonFile(file, ConfigError);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError(`${file}: expected a JSON object`, { file });
  const g = raw as Record<string, unknown>;
  const num = (k: string): number | undefined => {
    const v = g[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(`${file}: "${k}" must be a number, got ${JSON.stringify(v)}`, { file, field: k });
    return v;
  };
  let eos: number[] | undefined;
  const e = g.eos_token_id;
  if (typeof e === 'number' && Number.isInteger(e) && e >= 0) eos = [e];
  else if (Array.isArray(e) && e.every((x) => Number.isInteger(x) && x >= 0)) eos = e as number[];
  else if (e !== undefined && e !== null) throw new ConfigError(`${file}: "eos_token_id" must be a token id or a list of ids`, { file, field: 'eos_token_id' });
  const doSample = g.do_sample;
  const defaults: GenerationDefaults = {
    // transformers semantics: do_sample false means greedy whatever temperature says.
    temperature: doSample === false ? 0 : num('temperature'),
    topK: doSample === false ? undefined : num('top_k'),
    topP: doSample === false ? undefined : num('top_p'),
    maxTokens: num('max_new_tokens'),
  };
  return { eos, defaults };
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
