import { getMaxListeners } from 'node:events'
import { describe, expect, it } from 'vitest'
import { neverAbortedSignal } from '../../src/policies/types.js'

describe('neverAbortedSignal', () => {
  it('never aborts and takes any number of listeners without a leak warning', () => {
    expect(neverAbortedSignal.aborted).toBe(false)
    // 0 means unlimited: thousands of in-flight requests each add a listener to this one signal.
    expect(getMaxListeners(neverAbortedSignal)).toBe(0)
  })
})
