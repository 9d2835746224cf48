import * as crypto from 'node:crypto'
import type { IdempotencyRequest } from './types.js'

/**
 * Computes what a request looks like, stored with its key: a second request with the same key
 * and another fingerprint is answered 422. Return any string; `''` disables the check.
 */
export type FingerprintFunction = (request: IdempotencyRequest) => string | Promise<string>

// crypto.hash (Node >= 20.12) hashes small inputs about 3x faster than a Hash object; older
// Node 20 releases fall back to createHash.
type OneShotHash = (algorithm: string, data: Uint8Array | string, encoding: 'hex') => string
const oneShot = (crypto as { hash?: OneShotHash }).hash

/** Hex SHA-256 of bytes or a UTF-8 string. */
export function sha256Hex(data: Uint8Array | string): string {
  if (oneShot !== undefined) return oneShot('sha256', data, 'hex')
  return crypto.createHash('sha256').update(data).digest('hex')
}

/**
 * The default fingerprint: SHA-256 over the upper-case method, the route (path and query as
 * received) and the SHA-256 of the body bytes, prefixed with a version tag so the format can
 * change without misjudging stored records.
 */
export function defaultFingerprint(request: IdempotencyRequest): string {
  const bodyHash = sha256Hex(request.body)
  return `v1:${sha256Hex(`${request.method.toUpperCase()}\n${request.route}\n${bodyHash}`)}`
}

/**
 * The bytes adapters hash when their framework has already parsed the body: `Uint8Array` as is,
 * a string as UTF-8, `undefined`/`null` as nothing, anything else as JSON with object keys
 * sorted, so that two requests differing only in key order or whitespace count as the same.
 */
export function canonicalBodyBytes(body: unknown): Uint8Array {
  if (body === undefined || body === null) return new Uint8Array(0)
  if (body instanceof Uint8Array) return body
  if (typeof body === 'string') return Buffer.from(body)
  return Buffer.from(canonicalJson(body) ?? '')
}

/**
 * @internal JSON with object keys sorted (`toJSON` used; functions, symbols and `undefined`
 * fields left out): the text {@link canonicalBodyBytes} encodes. Undefined when the value has
 * no JSON text; throws as `JSON.stringify` does (a BigInt, a cycle).
 */
export function canonicalJson(value: unknown): string | undefined {
  if (value === null || typeof value !== 'object') return JSON.stringify(value)
  const withJson = value as { toJSON?: () => unknown }
  if (typeof withJson.toJSON === 'function') return canonicalJson(withJson.toJSON())
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v) ?? 'null').join(',')}]`
  const entries = Object.keys(value)
    .sort()
    .flatMap((k) => {
      const v = canonicalJson((value as Record<string, unknown>)[k])
      return v === undefined ? [] : [`${JSON.stringify(k)}:${v}`]
    })
  return `{${entries.join(',')}}`
}
