import { neverAbortedSignal, type Policy, type PolicyFunction } from '../../src/policies/types.js'

/**
 * A policy breakwater does not know: put in front of a pipeline, it keeps the whole chain on
 * the promise-based path (nothing is fused), for comparing that path with the fused one.
 */
export class Opaque implements Policy {
  async execute<T>(fn: PolicyFunction<T>, signal?: AbortSignal): Promise<T> {
    return await fn({ signal: signal ?? neverAbortedSignal, attempt: 1 })
  }
}
