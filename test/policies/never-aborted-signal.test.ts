import { describe, expect, it } from 'vitest'
import { neverAbortedSignal } from '../../src/policies/types.js'

describe('neverAbortedSignal', () => {
  it('never aborts and takes many listeners without a leak warning', async () => {
    expect(neverAbortedSignal.aborted).toBe(false)
    const warnings: string[] = []
    const onWarning = (warning: Error): void => {
      warnings.push(warning.name)
    }
    process.on('warning', onWarning)
    // Thousands of in-flight requests may each add a listener to this one shared signal.
    const listeners = Array.from({ length: 50 }, () => () => {})
    for (const l of listeners) neverAbortedSignal.addEventListener('abort', l)
    await new Promise((resolve) => setImmediate(resolve))
    for (const l of listeners) neverAbortedSignal.removeEventListener('abort', l)
    process.off('warning', onWarning)
    expect(warnings).not.toContain('MaxListenersExceededWarning')
  })
})
