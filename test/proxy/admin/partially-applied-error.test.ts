// PartiallyAppliedError is a breakwater error with the stable code the admin API answers with,
// so a caller of the cluster backend can tell it apart without instanceof (two copies of the
// package) and the shared classifier sees it.
import { describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../../src/core/errors.js'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'

describe('PartiallyAppliedError', () => {
  it('carries the stable code PARTIALLY_APPLIED and names both sides', () => {
    const error = new PartiallyAppliedError('isolate', [11], [{ pid: 12, error: 'timed out' }])
    expect(BreakwaterError.is(error)).toBe(true)
    expect(error.code).toBe('PARTIALLY_APPLIED')
    expect(error.name).toBe('PartiallyAppliedError')
    expect(error.op).toBe('isolate')
    expect(error.applied).toEqual([11])
    expect(error.failed).toEqual([{ pid: 12, error: 'timed out' }])
    expect(error.message).toBe('isolate applied by 1 worker(s) but not by worker 12 (timed out)')
  })
})
