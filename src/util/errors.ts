/**
 * Typed errors for lightning-moe.
 *
 * Every error the library throws on purpose is a `LightningMoeError` with a stable `code`, so callers (the CLI,
 * the server) can tell bad input from bugs without parsing messages. Messages are one line, say what was expected
 * and what was found, and name the file / field / parameter involved. Bugs (broken invariants) are
 * `InternalError`, thrown by `assert`.
 */

export type ErrorCode =
  | 'CONFIG'
  | 'WEIGHTS'
  | 'TOKENIZER'
  | 'SHAPE'
  | 'UNSUPPORTED'
  | 'INVALID_ARGUMENT'
  | 'ABORTED'
  | 'DISPOSED'
  | 'CUDA'
  | 'OUT_OF_MEMORY'
  | 'INTERNAL';

export interface ErrorOptions {
  /** A short suggestion printed after the message by the CLI. */
  hint?: string;
  cause?: unknown;
}

export class LightningMoeError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
  }
}

/** config.json is missing, malformed, inconsistent or describes an unsupported variant. */
export class ConfigError extends LightningMoeError {
  /** The offending file, when there is one. */
  readonly file: string | undefined;
  /** The offending key (dotted path), when there is one. */
  readonly field: string | undefined;
  constructor(message: string, options: ErrorOptions & { file?: string; field?: string } = {}) {
    super('CONFIG', message, options);
    this.file = options.file;
    this.field = options.field;
  }
}

/** A checkpoint file (safetensors, shard index) is malformed, missing or does not match the config. */
export class WeightsError extends LightningMoeError {
  readonly file: string | undefined;
  readonly tensor: string | undefined;
  constructor(message: string, options: ErrorOptions & { file?: string; tensor?: string } = {}) {
    super('WEIGHTS', message, options);
    this.file = options.file;
    this.tensor = options.tensor;
  }
}

/** tokenizer.json / tokenizer_config.json / the chat template cannot be loaded or applied. */
export class TokenizerError extends LightningMoeError {
  readonly file: string | undefined;
  constructor(message: string, options: ErrorOptions & { file?: string } = {}) {
    super('TOKENIZER', message, options);
    this.file = options.file;
  }
}

/** A tensor passed to an op has the wrong shape or dtype. */
export class ShapeError extends LightningMoeError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('SHAPE', message, options);
  }
}

/** A valid request for something this engine does not implement (a feature, a dtype, a backend). */
export class UnsupportedError extends LightningMoeError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('UNSUPPORTED', message, options);
  }
}

/** A parameter given by the caller is out of range or of the wrong type. `param` names it. */
export class InvalidArgumentError extends LightningMoeError {
  readonly param: string | undefined;
  constructor(message: string, options: ErrorOptions & { param?: string } = {}) {
    super('INVALID_ARGUMENT', message, options);
    this.param = options.param;
  }
}

/** A cache pool (lightning state slots, KV blocks) or device memory has no room for what was asked. */
export class CapacityError extends LightningMoeError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('OUT_OF_MEMORY', message, options);
  }
}

/** The operation was cancelled through an AbortSignal. */
export class AbortError extends LightningMoeError {
  constructor(message = 'the operation was aborted', options: ErrorOptions = {}) {
    super('ABORTED', message, options);
  }
}

/** A model, session or other resource was used after `dispose()`. */
export class DisposedError extends LightningMoeError {
  constructor(what: string) {
    super('DISPOSED', `${what} was used after dispose()`);
  }
}

/** A broken invariant: a bug in lightning-moe, not bad input. */
export class InternalError extends LightningMoeError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('INTERNAL', message, options);
  }
}

/** Throws `InternalError` when `cond` is false. For invariants only; validate user input with a typed error. */
export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new InternalError(message);
}
