// A query key may be percent-encoded (`?pass%77ord=x`): pg-connection-string, ioredis and any
// WHATWG URL reader decode it, so it sets the password as `?password=x` does. The free-text
// masking judged only the key as written, and logged such a value whole.
import { describe, expect, it } from 'vitest'
import { redactSecrets } from '../../src/observability/redact.js'

describe('redactSecrets on query parameters under an encoded key', () => {
  it.each([
    [
      'cannot open postgres://db/app?pass%77ord=HUNTER2',
      'cannot open postgres://db/app?pass%77ord=***',
    ],
    ['GET /x?a=1&%70assword=HUNTER2&b=2 200', 'GET /x?a=1&%70assword=***&b=2 200'],
    ['GET /x?access%5Ftoken=HUNTER2 200', 'GET /x?access%5Ftoken=*** 200'],
    ['GET /x?api%2Dkey=HUNTER2#top', 'GET /x?api%2Dkey=***#top'],
    ['GET /x?sslpass%77ord=HUNTER2', 'GET /x?sslpass%77ord=***'],
    // Encoded twice: what a layer encoding an encoded URL writes for a password.
    ['GET /x?pass%2577ord=HUNTER2', 'GET /x?pass%2577ord=***'],
  ])('%j', (text, expected) => {
    expect(redactSecrets(text)).toBe(expected)
  })

  it('leaves a key that does not decode to a secret name as it is', () => {
    for (const text of ['GET /x?q=pass%77ord&page%5Fsize=10', 'GET /x?page%255Fsize=1']) {
      expect(redactSecrets(text)).toBe(text)
    }
  })

  it('stays linear on a long run of query keys full of escapes', () => {
    const text = `?${'%41'.repeat(20_000)}${'?%41'.repeat(20_000)}`
    expect(redactSecrets(text)).toBe(text)
  })
})
