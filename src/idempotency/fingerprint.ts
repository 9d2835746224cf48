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
 * change without misjudging stored records. `v1:` for a body given as its bytes (node:http,
 * Hono, your own adapter); `v2:` for a framework's parsed body (Express, Fastify: the request
 * carries `earlierBody`), which from v2 on hashes a JSON string or `null` as its JSON text
 * (see {@link parsedBodyBytes}). A stored `v1:` record still matches the request it was stored
 * for: the core compares it with {@link matchesEarlierFingerprint}.
 */
export function defaultFingerprint(request: IdempotencyRequest): string {
  const digest = requestDigest(request.method, request.route, request.body)
  return request.earlierBody === undefined ? `v1:${digest}` : `v2:${digest}`
}

function requestDigest(method: string, route: string, body: Uint8Array): string {
  return sha256Hex(`${method.toUpperCase()}\n${route}\n${sha256Hex(body)}`)
}

/**
 * @internal Whether `stored`, a `v1:` fingerprint written by a release before parsed bodies
 * were fingerprinted as v2, is the one that release computed for `request` (from its
 * `earlierBody`). Only `v1:` records are compared this way: every parsed body is stored as
 * `v2:` now, so a new record never matches a request through its earlier encoding (under v1 a
 * JSON string `"abc"` and the text `abc` were one fingerprint). Such records are gone once
 * their retention has passed.
 */
export function matchesEarlierFingerprint(stored: string, request: IdempotencyRequest): boolean {
  const earlier = request.earlierBody
  if (earlier === undefined || !stored.startsWith('v1:')) return false
  return stored === `v1:${requestDigest(request.method, request.route, earlier)}`
}

/**
 * What Express and Fastify hash for a body their parser produced, as `body` and (for records
 * stored by earlier releases) `earlierBody` of the {@link IdempotencyRequest}. The bytes are
 * {@link canonicalBodyBytes}, except for a JSON string or JSON `null` (a `string` or `null` body
 * of a request whose `Content-Type` is JSON: `application/json` or `application/*+json`): those
 * are hashed as their JSON text (`"abc"`, `null`), the bytes node:http and Hono hash for the
 * same request, where `canonicalBodyBytes` hashes the text `abc` and nothing, as for a
 * text/plain `abc` or a request without a body (and a JSON string holding `{"a":1}` as the
 * object). A string under any other type is the raw text a text parser produced.
 */
export function parsedBodyBytes(
  body: unknown,
  contentType: string | undefined,
): { readonly body: Uint8Array; readonly earlierBody: Uint8Array } {
  const earlierBody = canonicalBodyBytes(body)
  if ((typeof body !== 'string' && body !== null) || !isJsonMediaType(contentType)) {
    return { body: earlierBody, earlierBody }
  }
  return { body: Buffer.from(JSON.stringify(body)), earlierBody }
}

function isJsonMediaType(contentType: string | undefined): boolean {
  if (contentType === undefined) return false
  const semicolon = contentType.indexOf(';')
  const type = (semicolon === -1 ? contentType : contentType.slice(0, semicolon))
    .trim()
    .toLowerCase()
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'))
}

/**
 * The bytes adapters hash when their framework has already parsed the body: `Uint8Array` as is,
 * a string as UTF-8, `undefined`/`null` as nothing, anything else as JSON with object keys
 * sorted, so that two requests differing only in key order or whitespace count as the same.
 * The v1 encoding: Express and Fastify now use {@link parsedBodyBytes}, which tells a JSON string
 * or `null` apart from a text body or none.
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
