/**
 * cuBLAS through koffi: the linear layers (bf16 × bf16 → bf16 or fp32, fp32 accumulation) and fp32 GEMMs (the
 * router). Weights are kept [out, in] row-major as in the checkpoint, which cuBLAS reads as a column-major
 * [in, out] matrix: y[T, N] = x[T, K] · W[N, K]ᵀ is the column-major product yᶜ[N, T] = op_T(Wᶜ[K, N]) · xᶜ[K, T].
 * A fixed workspace is set so that calls can be captured into CUDA graphs.
 */

import { CublasError } from './errors.js';
import { bindFunctions, loadLibrary, type NativeFn } from './libraries.js';
import type { CudaContext, DevicePtr } from './driver.js';

/** cudaDataType values. */
export const CUDA_R_32F = 0;
export const CUDA_R_16F = 2;
export const CUDA_R_16BF = 14;
const CUBLAS_COMPUTE_32F = 68;
const CUBLAS_GEMM_DEFAULT = -1;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;

const STATUS: Record<number, string> = {
  1: 'CUBLAS_STATUS_NOT_INITIALIZED',
  3: 'CUBLAS_STATUS_ALLOC_FAILED',
  7: 'CUBLAS_STATUS_INVALID_VALUE',
  8: 'CUBLAS_STATUS_ARCH_MISMATCH',
  11: 'CUBLAS_STATUS_MAPPING_ERROR',
  13: 'CUBLAS_STATUS_EXECUTION_FAILED',
  14: 'CUBLAS_STATUS_INTERNAL_ERROR',
  15: 'CUBLAS_STATUS_NOT_SUPPORTED',
  16: 'CUBLAS_STATUS_LICENSE_ERROR',
};

function check(status: number, call: string): void {
  if (status !== 0) throw new CublasError(`${call}: ${STATUS[status] ?? `cuBLAS status ${status}`}`, call, status);
}

export class Cublas {
  private readonly f: Record<string, NativeFn>;
  private readonly handle: bigint;
  /** Host scalars alpha = 1, beta = 0 (fp32, as the compute type requires). */
  private readonly one = new Float32Array([1]);
  private readonly zero = new Float32Array([0]);

  constructor(ctx: CudaContext, workspace: DevicePtr, workspaceBytes: number) {
    this.f = bindFunctions(loadLibrary('cublas'), [
      'int cublasCreate_v2(_Out_ void **handle)',
      'int cublasDestroy_v2(void *handle)',
      'int cublasSetStream_v2(void *handle, void *stream)',
      'int cublasSetWorkspace_v2(void *handle, uint64_t workspace, size_t bytes)',
      'int cublasGemmEx(void *handle, int transa, int transb, int m, int n, int k, const void *alpha, uint64_t A, int Atype, int lda, uint64_t B, int Btype, int ldb, const void *beta, uint64_t C, int Ctype, int ldc, int computeType, int algo)',
      'int cublasGemmStridedBatchedEx(void *handle, int transa, int transb, int m, int n, int k, const void *alpha, uint64_t A, int Atype, int lda, int64_t strideA, uint64_t B, int Btype, int ldb, int64_t strideB, const void *beta, uint64_t C, int Ctype, int ldc, int64_t strideC, int batchCount, int computeType, int algo)',
    ]);
    const h: (bigint | null)[] = [null];
    check(this.f.cublasCreate_v2(h), 'cublasCreate');
    this.handle = h[0]!;
    check(this.f.cublasSetStream_v2(this.handle, ctx.stream), 'cublasSetStream');
    check(this.f.cublasSetWorkspace_v2(this.handle, workspace, workspaceBytes), 'cublasSetWorkspace');
  }

  /**
   * y[T, N] = x[T, K] · W[N, K]ᵀ (+ y when accumulate). Row strides: x ldx, W ldw, y ldy (elements).
   * xType / wType / yType are cudaDataType values; x and W must share a type.
   */
  linear(
    y: DevicePtr, yType: number, ldy: number,
    x: DevicePtr, xType: number, ldx: number,
    w: DevicePtr, wType: number, ldw: number,
    T: number, N: number, K: number,
    accumulate = false,
  ): void {
    if (T === 0 || N === 0) return;
    check(
      this.f.cublasGemmEx(
        this.handle, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K,
        this.one, w, wType, ldw, x, xType, ldx,
        accumulate ? this.one : this.zero, y, yType, ldy,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT,
      ),
      `cublasGemmEx(linear T=${T} N=${N} K=${K})`,
    );
  }

  /**
   * Batched: for b < batch, y_b[M, N] = a_b[M, K] · c_b[N, K]ᵀ with element strides between batches, all rows
   * contiguous (lda = K, ldc = K, ldy = N).
   */
  linearBatched(
    y: DevicePtr, yType: number, strideY: number,
    a: DevicePtr, aType: number, strideA: number,
    c: DevicePtr, cType: number, strideC: number,
    M: number, N: number, K: number, batch: number,
  ): void {
    if (batch === 0 || M === 0 || N === 0) return;
    check(
      this.f.cublasGemmStridedBatchedEx(
        this.handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K,
        this.one, c, cType, K, strideC, a, aType, K, strideA,
        this.zero, y, yType, N, strideY, batch,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT,
      ),
      `cublasGemmStridedBatchedEx(M=${M} N=${N} K=${K} batch=${batch})`,
    );
  }

  /**
   * General column-major GEMM (the training backward): C[m, n] = op(A)·op(B) (+ C when accumulate), op = transpose
   * when the flag is set; fp32 compute for any type combination cublasGemmEx accepts (bf16 × bf16 → fp32, all fp32).
   */
  gemm(
    transA: boolean, transB: boolean, m: number, n: number, k: number,
    a: DevicePtr, aType: number, lda: number,
    b: DevicePtr, bType: number, ldb: number,
    c: DevicePtr, cType: number, ldc: number,
    accumulate = false,
  ): void {
    if (m === 0 || n === 0) return;
    check(
      this.f.cublasGemmEx(
        this.handle, transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
        this.one, a, aType, lda, b, bType, ldb,
        accumulate ? this.one : this.zero, c, cType, ldc,
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT,
      ),
      `cublasGemmEx(gemm m=${m} n=${n} k=${k})`,
    );
  }

  destroy(): void {
    check(this.f.cublasDestroy_v2(this.handle), 'cublasDestroy');
  }
}
