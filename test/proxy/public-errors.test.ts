import { describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../src/core/errors.js'
import * as proxy from '../../src/proxy/index.js'
import { UpstreamError } from '../../src/proxy/upstream/service-runtime.js'

describe('breakwater/proxy public errors', () => {
  it('exports UpstreamError, the class exchange() rejects with', () => {
    expect(proxy.UpstreamError).toBe(UpstreamError)
    const error = new proxy.UpstreamError('UPSTREAM_TIMEOUT', 504, 'orders', 'no answer')
    expect(error).toBeInstanceOf(BreakwaterError)
    expect(error.status).toBe(504)
    expect(error.retryable).toBe(true)
  })
})
