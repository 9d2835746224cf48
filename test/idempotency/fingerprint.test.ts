// The default fingerprint is stored with every key: its value for a given request must never
// change between releases (a change would answer 422 to honest retries of stored keys).
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  canonicalBodyBytes,
  defaultFingerprint,
  parsedBodyBytes,
} from '../../src/idempotency/index.js'
import type { IdempotencyRequest } from '../../src/idempotency/types.js'

function request(method: string, route: string, body: Uint8Array): IdempotencyRequest {
  return { method, route, body, header: () => undefined }
}

const sha256 = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex')

describe('defaultFingerprint', () => {
  it('keeps the v1 format: SHA-256 over method, route and the body hash', () => {
    const body = Buffer.from('{"amount":4200}')
    expect(defaultFingerprint(request('post', '/charges?x=1', body))).toBe(
      'v1:5fd7fee78ffbe6f2555eb9a9ef5832a0c7911fceaf5fdc92954db2705a2bf6aa',
    )
    expect(defaultFingerprint(request('POST', '/charges?x=1', body))).toBe(
      `v1:${sha256(`POST\n/charges?x=1\n${sha256(body)}`)}`,
    )
  })

  it('tells apart bodies, routes and methods, and hashes every byte value', () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i)
    const base = defaultFingerprint(request('POST', '/a', all))
    expect(defaultFingerprint(request('POST', '/a', all.slice(1)))).not.toBe(base)
    expect(defaultFingerprint(request('POST', '/b', all))).not.toBe(base)
    expect(defaultFingerprint(request('PUT', '/a', all))).not.toBe(base)
    expect(base).toBe(`v1:${sha256(`POST\n/a\n${sha256(all)}`)}`)
  })

  it('sees parsed bodies that differ only in key order or whitespace as the same', () => {
    expect(canonicalBodyBytes({ b: 1, a: [2, { d: 3, c: 4 }] })).toEqual(
      canonicalBodyBytes(JSON.parse('{ "a": [2, {"c": 4, "d": 3}], "b": 1 }')),
    )
  })

  it('keeps the v2 format for parsed bodies: v1 over the JSON text of a JSON string or null', () => {
    const json = 'application/json; charset=utf-8'
    const str = parsedBodyBytes('abc', json)
    expect(Buffer.from(str.body).toString()).toBe('"abc"')
    expect(Buffer.from(str.earlierBody).toString()).toBe('abc')
    expect(Buffer.from(parsedBodyBytes(null, 'application/problem+json').body).toString()).toBe(
      'null',
    )
    // A text parser's string, and every other parsed value, is hashed as before.
    expect(Buffer.from(parsedBodyBytes('abc', 'text/plain').body).toString()).toBe('abc')
    expect(Buffer.from(parsedBodyBytes({ b: 1, a: 2 }, json).body).toString()).toBe('{"a":2,"b":1}')
    expect(defaultFingerprint({ ...request('POST', '/a', str.body), ...str })).toBe(
      `v2:${sha256(`POST\n/a\n${sha256('"abc"')}`)}`,
    )
  })
})
