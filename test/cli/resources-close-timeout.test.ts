// The long-running commands close what they hold through ServiceResources.closeAll. A broker
// whose close() gives up on a stuck handler (SUBSCRIPTION_CLOSE_TIMEOUT, real Redis, a 20 ms
// closeTimeoutMs) must be reported as one JSON log line naming topic, group and what was left
// unfinished, and the database registered before it must still be closed. No CLI command
// subscribes today (the relay only publishes); this holds the contract for one that will.
import { afterAll, describe, expect, it } from 'vitest'
import { createRedisBroker } from '../../src/brokers/index.js'
import { ServiceResources } from '../../src/cli/long-running.js'
import { createJsonLogger } from '../../src/observability/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { Received, unique } from '../brokers/conformance.js'
import { testTuning } from '../brokers/targets.js'
import { brokerUrl, stopOwnBrokers } from '../support/brokers.js'
import { createTestSqlite } from '../support/sqlite.js'

afterAll(stopOwnBrokers)

describe('ServiceResources.closeAll with a broker whose close gives up', () => {
  const file = createTestSqlite('resources')
  afterAll(() => file.cleanup())

  it('logs SUBSCRIPTION_CLOSE_TIMEOUT as one line and still closes the database', async () => {
    const lines: string[] = []
    const resources = new ServiceResources(
      createJsonLogger({ output: { write: (text: string) => lines.push(text) } }),
    )
    const db = await openDatabase(file.url)
    let dbClosed = false
    resources.add('database', async () => {
      await db.close()
      dbClosed = true
    })
    const broker = createRedisBroker({
      ...testTuning,
      url: await brokerUrl('redis'),
      closeTimeoutMs: 20,
      onError: () => {},
    })
    resources.add('broker', () => broker.close())
    const topic = unique('resources')
    const group = unique('g')
    const started = new Received()
    await broker.subscriber.subscribe(topic, group, async (m) => {
      started.record(m)
      await new Promise<never>(() => {})
    })
    await broker.publisher.publish([{ id: 'stuck', topic, key: 'k', payload: '', headers: {} }])
    await started.until(() => started.messages.length >= 1, 'the handler to start')

    await resources.closeAll()

    expect(dbClosed).toBe(true)
    const text = lines.join('')
    expect(text.endsWith('\n')).toBe(true)
    const logged = text.trimEnd().split('\n')
    expect(logged).toHaveLength(1)
    const line = JSON.parse(logged[0]!) as {
      level: string
      msg: string
      error: { code: string; message: string }
    }
    expect(line.level).toBe('warn')
    expect(line.msg).toBe('closing the broker failed')
    expect(line.error.code).toBe('SUBSCRIPTION_CLOSE_TIMEOUT')
    for (const part of [JSON.stringify(topic), JSON.stringify(group), '1 handler still running'])
      expect(line.error.message).toContain(part)
  })
})
