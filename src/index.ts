/**
 * lightning-moe: a TypeScript engine for the MiniMax-01 family (MiniMax-Text-01, MiniMax-M1).
 *
 * @example
 *   import { loadModel } from 'lightning-moe';
 *   const model = await loadModel('./MiniMax-Text-01');
 *   const { text } = await model.chat([{ role: 'user', content: 'Hello!' }], { maxTokens: 64 });
 */

export { loadModel, loadModelInfo, Model } from './engine/model.js';
export type { ModelInfo, Device, LoadModelOptions, LoadProgressEvent, GenerationDefaults, Prompt, ChatOptions } from './engine/model.js';
export { Session } from './engine/session.js';
export type { AppendOptions, LogitRows } from './engine/session.js';
export type { GenerateOptions, GenerationResult, StreamEvent, TokenEvent, DoneEvent, FinishReason, PrefillProgress } from './engine/generate.js';
export { planMemory, refuse, DEVICE_RESERVE_BYTES, MAX_PREFILL_CHUNK, MIN_PREFILL_CHUNK } from './engine/memory-plan.js';
export type { MemoryPlan, MemoryPlanOptions, WeightBytes, ActivationBytes, PlanDType } from './engine/memory-plan.js';
export { Sampler, Rng } from './engine/sampling.js';
export type { SamplingParams } from './engine/sampling.js';
export type { TraceHook, CacheOptions } from './model/minimax01.js';
// Tensor/expert parallelism (issue 8): communicators, the sharding plan and per-rank loading.
export { SingleRank, type Communicator } from './parallel/communicator.js';
export { ThreadCommunicator, createThreadCommunicatorShared, type ThreadCommunicatorShared } from './parallel/thread-communicator.js';
export { parallelContext, validateParallel, headRange, kvHeadRange, expertRange, slotSelection, type ParallelContext, type SlotSelection } from './parallel/shard.js';
export { loadRank } from './parallel/load.js';
export { Scheduler } from './engine/scheduler.js';
export type { EngineRequest, SampledToken, SequenceListener, SequenceHandle, SchedulerOptions, SchedulerStats, EngineFinishReason } from './engine/scheduler.js';
export type { LogitProcessing, TokenLogprob } from './engine/logits.js';
export { KV_BLOCK_SIZE } from './backend/backend.js';
export type { DeviceMemoryInfo } from './backend/backend.js';
export { parseTokenCount, parseByteSize, formatBytes } from './util/units.js';

export { parseModelConfig, loadModelConfig } from './config/config.js';
export type { ModelConfig, LayerKind, ConfigLayout } from './config/config.js';
export { countParameters, weightBytes, cacheSizes, WEIGHT_DTYPES } from './config/size.js';
export type { ParameterCounts, CacheSizes, WeightDType } from './config/size.js';

export { Tokenizer, IncrementalDecoder } from './tokenizer/index.js';
export type { ChatMessage, ChatContentPart, ChatTemplateOptions } from './tokenizer/index.js';

export { Checkpoint } from './weights/checkpoint.js';
export { readSafetensorsHeader } from './weights/safetensors.js';
export type { TensorEntry, SafetensorsHeader, StDType } from './weights/safetensors.js';

export {
  LightningMoeError,
  ConfigError,
  WeightsError,
  TokenizerError,
  ShapeError,
  UnsupportedError,
  InvalidArgumentError,
  AbortError,
  CapacityError,
  DisposedError,
  InternalError,
} from './util/errors.js';
export type { ErrorCode } from './util/errors.js';
