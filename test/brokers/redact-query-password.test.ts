// ioredis takes a password from the URL query (`redis://host:6379/?password=...`) when the URL
// has no userinfo, so it is a credential like `:secret@`: the adapters' messages name the URL
// with its userinfo hidden, and must hide that too. Port 9 on loopback refuses the connection:
// the failure's message names the URL without a server to reach.
import { describe, expect, it } from 'vitest'
import { redactUrl } from '../../src/brokers/common.js'
import { createRedisBroker } from '../../src/brokers/index.js'
import { makeBatch, unique } from './conformance.js'
import { expectBrokerError, rejectionOf } from './support.js'

describe('a password in a redis URL query', () => {
  it.each(['redis', 'rediss'])('%s://: is hidden in the connect failure', async (scheme) => {
    const secret = 'query-s3cret-pw'
    const broker = createRedisBroker({
      url: `${scheme}://127.0.0.1:9/?db=0&password=${secret}`,
      connectTimeoutMs: 2_000,
    })
    try {
      const error = await rejectionOf(broker.publisher.publish(makeBatch(unique('pw'), 1, 1)))
      expectBrokerError(error, 'BROKER_UNAVAILABLE')
      expect(error.message).toContain('127.0.0.1:9')
      expect(error.message).not.toContain(secret)
    } finally {
      await broker.close()
    }
  })
})

// ioredis reads the query through URLSearchParams, which percent-decodes keys: `pass%77ord` is
// `password`. A URL that does not parse (port 99999) is hidden by pattern, which looked for the
// literal `password=` only.
describe('a password under a percent-encoded query key', () => {
  it.each([
    ['redis://127.0.0.1:6379/?pass%77ord=hunter2', 'redis://127.0.0.1:6379/?password=***'],
    ['redis://127.0.0.1:99999/?pass%77ord=hunter2', 'redis://127.0.0.1:99999/?pass%77ord=***'],
    [
      'redis://127.0.0.1:99999/?db=1&%70assword=hunter2',
      'redis://127.0.0.1:99999/?db=1&%70assword=***',
    ],
  ])('%s is hidden', (url, shown) => {
    expect(redactUrl(url)).toBe(shown)
  })
})
