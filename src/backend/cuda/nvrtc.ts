/**
 * Run-time compilation of the project's `.cu` kernel files with NVRTC, for the device's exact architecture
 * (`sm_90a` on Hopper), with an on-disk cache of the resulting cubins keyed by a hash of the source, the headers,
 * the options, the architecture and the NVRTC version. A compile error becomes an NvrtcCompileError carrying
 * the program log.
 *
 * Cache folder: $LMOE_KERNEL_CACHE, else $XDG_CACHE_HOME/lightning-moe/kernels, else ~/.cache/lightning-moe/kernels.
 */

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CudaError, NvrtcCompileError } from './errors.js';
import { bindFunctions, loadLibrary, type NativeFn } from './libraries.js';

class NvrtcApi {
  readonly f: Record<string, NativeFn>;
  readonly version: string;
  constructor() {
    this.f = bindFunctions(loadLibrary('nvrtc'), [
      'int nvrtcVersion(_Out_ int *major, _Out_ int *minor)',
      'const char *nvrtcGetErrorString(int result)',
      'int nvrtcCreateProgram(_Out_ void **prog, const char *src, const char *name, int numHeaders, const char **headers, const char **includeNames)',
      'int nvrtcCompileProgram(void *prog, int numOptions, const char **options)',
      'int nvrtcGetProgramLogSize(void *prog, _Out_ size_t *size)',
      'int nvrtcGetProgramLog(void *prog, _Out_ uint8_t *log)',
      'int nvrtcGetCUBINSize(void *prog, _Out_ size_t *size)',
      'int nvrtcGetCUBIN(void *prog, _Out_ uint8_t *cubin)',
      'int nvrtcDestroyProgram(_Inout_ void **prog)',
    ]);
    const major = [0], minor = [0];
    this.check(this.f.nvrtcVersion(major, minor), 'nvrtcVersion');
    this.version = `${major[0]}.${minor[0]}`;
  }

  check(status: number, call: string): void {
    if (status !== 0) throw new CudaError(`${call}: ${String(this.f.nvrtcGetErrorString(status))}`, call, status);
  }
}

let api: NvrtcApi | undefined;
function nvrtc(): NvrtcApi {
  api ??= new NvrtcApi();
  return api;
}

export function cacheDir(): string {
  if (process.env.LMOE_KERNEL_CACHE) return process.env.LMOE_KERNEL_CACHE;
  const base = process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache');
  return path.join(base, 'lightning-moe', 'kernels');
}

export interface CompileRequest {
  /** Shown in errors and logs, e.g. "norm.cu". */
  readonly name: string;
  readonly source: string;
  /** Headers the source includes by name ("common.cuh" → its text). */
  readonly headers: Readonly<Record<string, string>>;
  /** e.g. "sm_90a". */
  readonly arch: string;
  readonly options?: readonly string[];
}

export interface CompileResult {
  readonly cubin: Uint8Array;
  readonly cached: boolean;
  readonly seconds: number;
}

/** Compiles (or fetches from the cache) one kernel file to a cubin for `arch`. */
export function compileCubin(req: CompileRequest): CompileResult {
  const t0 = performance.now();
  const options = ['--std=c++17', `--gpu-architecture=${req.arch}`, '-default-device', '-lineinfo', ...(req.options ?? [])];
  const n = nvrtc();
  const key = crypto
    .createHash('sha256')
    .update(JSON.stringify({ src: req.source, headers: req.headers, options, arch: req.arch, nvrtc: n.version }))
    .digest('hex')
    .slice(0, 32);
  const dir = cacheDir();
  const file = path.join(dir, `${req.name.replace(/[^\w.-]/g, '_')}-${req.arch}-${key}.cubin`);
  try {
    const cubin = fs.readFileSync(file);
    return { cubin: new Uint8Array(cubin), cached: true, seconds: (performance.now() - t0) / 1000 };
  } catch {
    /* not cached yet */
  }

  const headerNames = Object.keys(req.headers);
  const prog: (bigint | null)[] = [null];
  n.check(
    n.f.nvrtcCreateProgram(prog, req.source, req.name, headerNames.length, headerNames.map((h) => req.headers[h]), headerNames),
    `nvrtcCreateProgram(${req.name})`,
  );
  try {
    const status = n.f.nvrtcCompileProgram(prog[0], options.length, options);
    const logSize = [0];
    n.check(n.f.nvrtcGetProgramLogSize(prog[0], logSize), 'nvrtcGetProgramLogSize');
    const logBuf = new Uint8Array(Number(logSize[0]));
    if (logBuf.length > 0) n.check(n.f.nvrtcGetProgramLog(prog[0], logBuf), 'nvrtcGetProgramLog');
    const log = Buffer.from(logBuf).toString('utf8').replace(/\0+$/, '').trim();
    if (status !== 0) {
      const first = log.split('\n').find((l) => /error/i.test(l)) ?? log.split('\n')[0] ?? '';
      throw new NvrtcCompileError(`NVRTC could not compile ${req.name} for ${req.arch}: ${first.trim()}`, req.name, log, options);
    }
    const size = [0];
    n.check(n.f.nvrtcGetCUBINSize(prog[0], size), 'nvrtcGetCUBINSize');
    const cubin = new Uint8Array(Number(size[0]));
    n.check(n.f.nvrtcGetCUBIN(prog[0], cubin), 'nvrtcGetCUBIN');
    try {
      fs.mkdirSync(dir, { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, cubin);
      fs.renameSync(tmp, file); // atomic: concurrent processes never read half a cubin
    } catch {
      /* an unwritable cache only costs a recompile */
    }
    return { cubin, cached: false, seconds: (performance.now() - t0) / 1000 };
  } finally {
    n.f.nvrtcDestroyProgram(prog);
  }
}

export function nvrtcVersion(): string {
  return nvrtc().version;
}
