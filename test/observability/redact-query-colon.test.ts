// A message names a URL and then says what went wrong after a colon: `cannot open <url>: connect
// ECONNREFUSED`. A query parameter's value ran to the blank, so the colon was masked with the
// secret (`password=*** connect`), while the database messages keep it (`password=***: connect`).
import { describe, expect, it } from 'vitest'
import { redactSecrets } from '../../src/observability/redact.js'

describe('redactSecrets on a query parameter before a colon and a blank', () => {
  it.each([
    [
      'cannot open postgres://db/app?password=HUNTER2: connect ECONNREFUSED',
      'cannot open postgres://db/app?password=***: connect ECONNREFUSED',
    ],
    [
      'cannot open postgres://db/app?pass%77ord=HUNTER2: connect ECONNREFUSED',
      'cannot open postgres://db/app?pass%77ord=***: connect ECONNREFUSED',
    ],
    ['GET /x?token=abc:\tnext', 'GET /x?token=***:\tnext'],
    ['refused https://h/x?api_key=abc:', 'refused https://h/x?api_key=***:'],
  ])('%j keeps the colon', (text, expected) => {
    expect(redactSecrets(text)).toBe(expected)
  })

  it('masks a colon inside the value with it', () => {
    expect(redactSecrets('GET /x?token=abc:def 200')).toBe('GET /x?token=*** 200')
    expect(redactSecrets('GET /x?token=a::b&c=1')).toBe('GET /x?token=***&c=1')
  })
})
