/**
 * The project's kernels: each `kernels/<family>.cu` file is compiled by NVRTC for the device's architecture on
 * first use (cached on disk, see nvrtc.ts), loaded as one module, and its `extern "C"` kernels are looked up by
 * name. `common.cuh` is passed to NVRTC as an in-memory header, so no CUDA include path is needed.
 */

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CudaContext, KernelArg } from './driver.js';
import { compileCubin } from './nvrtc.js';
import { CudaError } from './errors.js';

/** Where the .cu files live next to this module (copied into dist/ by the build). */
export const KERNEL_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'kernels');

export interface CompileEvent {
  readonly file: string;
  readonly cached: boolean;
  readonly seconds: number;
}

export class Kernel {
  private maxShared = 48 * 1024;
  constructor(
    private readonly ctx: CudaContext,
    private readonly fn: bigint,
    readonly name: string,
  ) {}

  /** Launches on the context's stream. Dynamic shared memory above 48 KB is opted into on first need. */
  launch(grid: readonly number[], block: readonly number[], sharedBytes: number, args: readonly KernelArg[]): void {
    if (sharedBytes > this.maxShared) {
      const limit = this.ctx.info.maxSharedMemoryPerBlockOptin;
      if (sharedBytes > limit) throw new CudaError(`${this.name}: needs ${sharedBytes} B of shared memory, the device allows ${limit}`, 'cuLaunchKernel');
      this.ctx.setMaxDynamicSharedMemory(this.fn, sharedBytes, this.name);
      this.maxShared = sharedBytes;
    }
    this.ctx.launch(this.fn, this.name, grid, block, sharedBytes, args);
  }
}

export class KernelLibrary {
  private readonly modules = new Map<string, bigint>();
  private readonly kernels = new Map<string, Kernel>();
  private readonly headers: Record<string, string>;

  constructor(
    private readonly ctx: CudaContext,
    private readonly dir = KERNEL_DIR,
    private readonly onCompile?: (e: CompileEvent) => void,
  ) {
    this.headers = { 'common.cuh': this.readSource('common.cuh') };
  }

  /** The kernel `name` from `<file>.cu`. */
  get(file: string, name: string): Kernel {
    const key = `${file}:${name}`;
    let k = this.kernels.get(key);
    if (!k) {
      k = new Kernel(this.ctx, this.ctx.getFunction(this.module(file), name), name);
      this.kernels.set(key, k);
    }
    return k;
  }

  /** Compiles and loads every kernel file now (start-up cost paid once, before the first forward pass). */
  preload(files: readonly string[]): void {
    for (const f of files) this.module(f);
  }

  private module(file: string): bigint {
    let m = this.modules.get(file);
    if (m === undefined) {
      const name = `${file}.cu`;
      const r = compileCubin({ name, source: this.readSource(name), headers: this.headers, arch: this.ctx.info.arch });
      this.onCompile?.({ file: name, cached: r.cached, seconds: r.seconds });
      m = this.ctx.loadModule(r.cubin);
      this.modules.set(file, m);
    }
    return m;
  }

  private readSource(name: string): string {
    try {
      return fs.readFileSync(path.join(this.dir, name), 'utf8');
    } catch {
      throw new CudaError(`kernel source ${name} not found in ${this.dir} (was the package built?)`, 'readFile');
    }
  }
}
