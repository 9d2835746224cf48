import { afterAll, describe, expect, it } from 'vitest'
import { createRedisBroker } from '../../src/brokers/index.js'
import { BreakwaterError } from '../../src/core/errors.js'
import { ManualClock } from '../../src/testing/index.js'
import { startPrivateBroker, stopOwnBrokers } from '../support/brokers.js'
import { describeBrokerConformance } from './conformance.js'

// Only stops a server this file started itself (when no global setup provided one).
afterAll(stopOwnBrokers)

describeBrokerConformance({ name: 'redis', dedupe: false })

/** Settles `work`, advancing the clock to each pending timer while real I/O runs between. */
async function drive<T>(clock: ManualClock, work: Promise<T>): Promise<T> {
  let settled = false
  const result = work.finally(() => {
    settled = true
  })
  result.catch(() => {})
  while (!settled) {
    const next = clock.nextTimerAt()
    if (next !== undefined) await clock.advance(next - clock.now())
    else await new Promise((resolve) => setTimeout(resolve, 1))
  }
  return result
}

describe('redis specifics', () => {
  it('fails a connect the server accepts but never answers after connectTimeoutMs, instead of hanging', async () => {
    // A frozen server: the kernel still accepts connections, nothing answers the handshake.
    const server = await startPrivateBroker('redis')
    process.kill(server.pid, 'SIGSTOP')
    try {
      const clock = new ManualClock(1_000)
      const broker = createRedisBroker({ url: server.url, clock, connectTimeoutMs: 2_000 })
      const message = { id: 'a', topic: 't', key: 'k', payload: 'x', headers: {} }
      for (const attempt of [
        (): Promise<unknown> => broker.publisher.publish([message]),
        () => broker.subscriber.subscribe('t', 'g', async () => {}),
      ]) {
        const error = await drive(clock, attempt()).catch((e: unknown) => e)
        expect(BreakwaterError.is(error), String(error)).toBe(true)
        expect((error as BreakwaterError).code).toBe('BROKER_UNAVAILABLE')
        expect((error as Error).message).toMatch(/2000 ms/)
      }
      await broker.close()
    } finally {
      process.kill(server.pid, 'SIGCONT')
      await server.stop()
    }
  })
})
