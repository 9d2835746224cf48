import { describe, expect, it } from 'vitest'
import { ProjectionFailedError, SubscriptionHandlerError } from '../../src/cqrs/index.js'
import { classifyFailure } from '../../src/index.js'

// A projection's apply (or a subscription's handler) that failed on a lock timeout, a deadlock
// or a lost connection fails for reasons outside the event: retry() around catchUp() should
// try again, as the live loop does. One that failed on its own bug should not be retried.
const event = { position: 7, stream: 'order-1', type: 'OrderPlaced', id: 'e-7' }
const pgError = (code: string) =>
  Object.assign(new Error(`pg ${code}`), { code, severity: 'ERROR' })

describe('an event-handling error is as retryable as its cause', () => {
  it.each(['55P03', '40P01', '40001', 'ECONNRESET'])('cause %s: transient', (code) => {
    expect(classifyFailure(new ProjectionFailedError('orders', event, pgError(code), false))).toBe(
      'transient',
    )
    expect(classifyFailure(new SubscriptionHandlerError('mailer', event, pgError(code)))).toBe(
      'transient',
    )
  })

  it('a bug in apply (TypeError), a constraint violation (23505): not transient', () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'id')")
    expect(new ProjectionFailedError('orders', event, bug, false).retryable).toBe(false)
    expect(classifyFailure(new ProjectionFailedError('orders', event, bug, false))).toBe('unknown')
    expect(
      classifyFailure(new ProjectionFailedError('orders', event, pgError('23505'), true)),
    ).toBe('unknown')
  })
})
