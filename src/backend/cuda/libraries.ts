/**
 * Finding the CUDA shared libraries at run time (no native addon, no compiler at install): the driver (libcuda,
 * installed with the NVIDIA driver), NVRTC and cuBLAS/cuBLASLt (from a CUDA toolkit or the `nvidia-*` Python
 * wheels). Search order: $CUDA_HOME/lib64, each $LD_LIBRARY_PATH entry, the dynamic loader's own search (ldconfig
 * cache, /etc/ld.so.conf), /usr/local/cuda/lib64, and the pip wheels' `nvidia/<pkg>/lib` folders.
 */

import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { CudaError } from './errors.js';

export type KoffiLib = ReturnType<typeof koffi.load>;

/** Candidate file names, newest first. */
export const LIBRARIES = {
  cuda: ['libcuda.so.1', 'libcuda.so'],
  nvrtc: ['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so'],
  cublas: ['libcublas.so.13', 'libcublas.so.12', 'libcublas.so'],
  cublasLt: ['libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so'],
} as const;

/** Folder name of each library inside the nvidia pip wheels (site-packages/nvidia/<pkg>/lib). */
const WHEEL_PACKAGES: Record<keyof typeof LIBRARIES, string[]> = {
  cuda: [],
  nvrtc: ['cuda_nvrtc', 'cu13', 'cu12'],
  cublas: ['cublas', 'cu13', 'cu12'],
  cublasLt: ['cublas', 'cu13', 'cu12'],
};

/** $CUDA_HOME (or $CUDA_PATH) lib64/lib, then each $LD_LIBRARY_PATH entry, then /usr/local/cuda/lib64 (not for the driver). */
export function candidateDirs(kind: keyof typeof LIBRARIES | 'other'): string[] {
  const dirs: string[] = [];
  const cudaHome = process.env.CUDA_HOME ?? process.env.CUDA_PATH;
  if (cudaHome) dirs.push(path.join(cudaHome, 'lib64'), path.join(cudaHome, 'lib'));
  for (const d of (process.env.LD_LIBRARY_PATH ?? '').split(':')) if (d) dirs.push(d);
  return dirs.concat(kind === 'cuda' ? [] : ['/usr/local/cuda/lib64']);
}

function wheelDirs(kind: keyof typeof LIBRARIES): string[] {
  return wheelLibDirs(WHEEL_PACKAGES[kind]);
}

/** The `nvidia/<pkg>/lib` folders of the nvidia-* pip wheels, for each package folder name, in every site-packages found. */
export function wheelLibDirs(packages: readonly string[]): string[] {
  const roots = ['/usr/lib/python3/dist-packages', '/usr/local/lib'];
  const out: string[] = [];
  const sitePackages: string[] = [];
  for (const base of ['/usr/local/lib', '/usr/lib', '/opt/torch/.venv/lib', ...(process.env.VIRTUAL_ENV ? [path.join(process.env.VIRTUAL_ENV, 'lib')] : [])]) {
    let entries: string[] = [];
    try {
      entries = fs.readdirSync(base).filter((e) => e.startsWith('python3'));
    } catch {
      continue;
    }
    for (const e of entries) sitePackages.push(path.join(base, e, 'site-packages'), path.join(base, e, 'dist-packages'));
  }
  for (const sp of [...sitePackages, ...roots]) {
    for (const pkg of packages) out.push(path.join(sp, 'nvidia', pkg, 'lib'));
  }
  return out;
}

const loaded = new Map<string, KoffiLib>();

/** Loads a CUDA library or throws a CudaError saying where it looked. */
export function loadLibrary(kind: keyof typeof LIBRARIES): KoffiLib {
  const cached = loaded.get(kind);
  if (cached) return cached;
  const names = LIBRARIES[kind];
  const tried: string[] = [];
  const attempt = (file: string): KoffiLib | undefined => {
    try {
      const lib = koffi.load(file);
      loaded.set(kind, lib);
      return lib;
    } catch {
      tried.push(file);
      return undefined;
    }
  };
  for (const dir of candidateDirs(kind)) {
    for (const n of names) {
      const f = path.join(dir, n);
      if (fs.existsSync(f)) {
        const lib = attempt(f);
        if (lib) return lib;
      }
    }
  }
  for (const n of names) {
    const lib = attempt(n); // the dynamic loader's own search
    if (lib) return lib;
  }
  for (const dir of wheelDirs(kind)) {
    for (const n of names) {
      const f = path.join(dir, n);
      if (fs.existsSync(f)) {
        const lib = attempt(f);
        if (lib) return lib;
      }
    }
  }
  const what = kind === 'cuda' ? 'the NVIDIA driver library (libcuda.so.1): no NVIDIA driver / GPU on this machine?' : `${names[0]} (part of the CUDA toolkit)`;
  throw new CudaError(`cannot load ${what}`, `dlopen(${names[0]})`, undefined, {
    hint: kind === 'cuda' ? 'use --device cpu' : 'install the CUDA 12/13 toolkit or set CUDA_HOME / LD_LIBRARY_PATH',
  });
}

/* eslint-disable @typescript-eslint/no-explicit-any */
export type NativeFn = (...args: any[]) => any;

/**
 * Binds C functions by their declarations ("int cuInit(unsigned int flags)"), keyed by name. Declarations in
 * `optional` may be absent from this library version.
 */
export function bindFunctions(lib: KoffiLib, required: readonly string[], optional: readonly string[] = []): Record<string, NativeFn> {
  const out: Record<string, NativeFn> = {};
  const name = (sig: string): string => /(\w+)\s*\(/.exec(sig)![1];
  for (const sig of required) out[name(sig)] = lib.func(sig);
  for (const sig of optional) {
    try {
      out[name(sig)] = lib.func(sig);
    } catch {
      /* symbol absent in this version */
    }
  }
  return out;
}
