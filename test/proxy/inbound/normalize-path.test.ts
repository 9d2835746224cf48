import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import type { RouteConfig } from '../../../src/proxy/contracts.js'
import { normalizePath, pathHasPrefix } from '../../../src/proxy/inbound/normalize-path.js'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'

function ok(raw: string): string {
  const result = normalizePath(raw)
  if (!result.ok) throw new Error(`refused ${raw}: ${result.reason}`)
  return result.path
}

function refused(raw: string): string {
  const result = normalizePath(raw)
  if (result.ok) throw new Error(`accepted ${raw} as ${result.path}`)
  return result.reason
}

describe('normalizePath examples', () => {
  it.each([
    ['/', '/'],
    ['/a/b', '/a/b'],
    ['/a/b/', '/a/b/'],
    ['/a//b///c', '/a/b/c'],
    ['//a', '/a'],
    ['/a/./b', '/a/b'],
    ['/a/b/..', '/a/'],
    ['/a/b/.', '/a/b/'],
    ['/a/b/../c', '/a/c'],
    ['/api/%2e%2e/admin', '/admin'],
    ['/api/%2E%2e/admin', '/admin'],
    ['/api/.%2e/admin', '/admin'],
    ['/%61%7A%2D%5F%7E', '/az-_~'],
    ['/a%c3%a9', '/a%C3%A9'],
    ['/a%20b', '/a%20b'],
    ['/a/%25ab', '/a/%25ab'],
    ['/a;b=c/d', '/a;b=c/d'],
    ['/a/...', '/a/...'],
    ['/a/..b', '/a/..b'],
  ])('%s -> %s', (raw, expected) => {
    expect(ok(raw)).toBe(expected)
  })

  it.each([
    ['', 'path does not start with /'],
    ['a/b', 'path does not start with /'],
    ['/..', 'dot-dot segment above the root'],
    ['/a/../..', 'dot-dot segment above the root'],
    ['/%2e%2e', 'dot-dot segment above the root'],
    ['/api\\..\\admin', 'backslash'],
    ['/a\\b', 'backslash'],
    ['/a%2fb', 'encoded slash or backslash'],
    ['/a%2Fb', 'encoded slash or backslash'],
    ['/a%5cb', 'encoded slash or backslash'],
    ['/a/%252e%252e/b', 'double percent-encoding'],
    ['/a/%252F', 'double percent-encoding'],
    ['/a/%255c', 'double percent-encoding'],
    ['/a/%25252e', 'double percent-encoding'],
    // The hex after `%25` may itself arrive encoded: judged on what it decodes to.
    ['/api/%25%32%65%25%32%65/secret', 'double percent-encoding'],
    ['/api/%25%32%66etc', 'double percent-encoding'],
    ['/api/%25%35%63x', 'double percent-encoding'],
    ['/api/%25%32%45', 'double percent-encoding'],
    ['/api/%252%65', 'double percent-encoding'],
    ['/api/%25%32%35', 'double percent-encoding'],
    ['/api/%25%30%30', 'double percent-encoding'],
    ['/a%00', 'encoded control character'],
    ['/a%0d%0a', 'encoded control character'],
    ['/a%7f', 'encoded control character'],
    ['/a%zz', 'malformed percent-encoding'],
    ['/a%2', 'malformed percent-encoding'],
    ['/a%', 'malformed percent-encoding'],
    ['/a b', 'control or non-ASCII character'],
    ['/a\u00e9', 'control or non-ASCII character'],
    ['/a\tb', 'control or non-ASCII character'],
    ['/a#frag', 'fragment in target'],
    ['/a/..;/b', 'dot segment with parameters'],
    ['/a/.;x/b', 'dot segment with parameters'],
    ['/a/%2e%2e;/b', 'dot segment with parameters'],
  ])('refuses %j (%s)', (raw, reason) => {
    expect(refused(raw)).toBe(reason)
  })
})

describe('pathHasPrefix', () => {
  it.each([
    ['/orders', '/orders', true],
    ['/orders/', '/orders', true],
    ['/orders/1', '/orders', true],
    ['/orders/1', '/orders/', true],
    ['/ordersx', '/orders', false],
    ['/order', '/orders', false],
    ['/anything', '/', true],
  ])('%s under %s: %s', (path, prefix, expected) => {
    expect(pathHasPrefix(path, prefix)).toBe(expected)
  })
})

// Paths built from the pieces that matter to normalization, so the generator hits dot
// segments, encodings and separators often.
const piece = fc.constantFrom(
  '/',
  '//',
  '.',
  '..',
  '%2e',
  '%2E',
  '%2e%2e',
  '%2f',
  '%5c',
  '%25',
  '%252e',
  '%2525',
  '%25ab',
  '%41',
  '%c3%a9',
  '%20',
  '%',
  '\\',
  ';',
  '..;',
  'a',
  'admin',
  'api',
  '~',
  '?',
  '#',
  '%00',
)
const rawPath = fc.oneof(
  fc.array(piece, { maxLength: 14 }).map((parts) => `/${parts.join('')}`),
  fc
    .string({ unit: fc.constantFrom(...'/.%2eEfF5cC\\a;~'.split('')), maxLength: 24 })
    .map((text) => `/${text}`),
)
const prefix = fc
  .array(fc.constantFrom('a', 'admin', 'api', '~', 'x.y'), { minLength: 1, maxLength: 3 })
  .map((segments) => `/${segments.join('/')}`)

// What an upstream that decodes percent-encodings `times` times and then resolves dot segments
// (treating a backslash as a slash, as WHATWG URL and IIS do) would make of a path.
function upstreamView(path: string, times: number): string {
  let text = path
  for (let i = 0; i < times; i++) {
    text = text.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) =>
      String.fromCharCode(Number.parseInt(hex, 16)),
    )
  }
  const out: string[] = []
  for (const segment of text.replaceAll('\\', '/').split('/')) {
    if (segment === '' || segment === '.') continue
    if (segment === '..') out.pop()
    else out.push(segment)
  }
  return `/${out.join('/')}`
}

// Paths of any percent-encoded byte (either case) among raw characters, and of `%25` followed
// by two hex digits each sent raw or encoded (`%25%32%65`), which spell a double encoding only
// once decoded.
const encodedByte = (byte: number) => `%${byte.toString(16).padStart(2, '0')}`
const hexDigitText = fc.constantFrom(...'0123456789abcdefABCDEF'.split(''))
const maybeEncodedHexDigit = fc.oneof(
  hexDigitText,
  hexDigitText.map((digit) => encodedByte(digit.charCodeAt(0))),
  hexDigitText.map((digit) => encodedByte(digit.charCodeAt(0)).toUpperCase()),
)
const encodedPiece = fc.oneof(
  fc.integer({ min: 0, max: 0xff }).map(encodedByte),
  fc.integer({ min: 0, max: 0xff }).map((byte) => encodedByte(byte).toUpperCase()),
  fc.tuple(maybeEncodedHexDigit, maybeEncodedHexDigit).map(([high, low]) => `%25${high}${low}`),
  hexDigitText,
  fc.constantFrom('/', '.', '..', 'a', ';'),
)
const encodedPath = fc.array(encodedPiece, { maxLength: 16 }).map((parts) => `/${parts.join('')}`)

describe('normalizePath properties', () => {
  it('gives a fixed point: its output normalizes to itself, never to a refusal', () => {
    fc.assert(
      fc.property(fc.oneof(rawPath, encodedPath), (raw) => {
        const first = normalizePath(raw)
        if (!first.ok) return
        expect(normalizePath(first.path), `${raw} -> ${first.path}`).toEqual(first)
      }),
      { numRuns: 10_000 },
    )
  })

  it('is idempotent', () => {
    fc.assert(
      fc.property(rawPath, (raw) => {
        const first = normalizePath(raw)
        if (!first.ok) return
        expect(normalizePath(first.path)).toEqual(first)
      }),
      { numRuns: 5_000 },
    )
  })

  it('never yields dot segments, empty segments, backslashes or encoded separators', () => {
    fc.assert(
      fc.property(rawPath, (raw) => {
        const result = normalizePath(raw)
        if (!result.ok) return
        const path = result.path
        expect(path.startsWith('/')).toBe(true)
        expect(path.includes('//')).toBe(false)
        expect(path.includes('\\')).toBe(false)
        expect(/%(2e|2f|5c|00)/i.test(path)).toBe(false)
        expect(/[^\x21-\x7e]/.test(path)).toBe(false)
        const segments = path.slice(1).split('/')
        for (const segment of segments.slice(0, -1)) expect(segment).not.toBe('')
        for (const segment of segments) {
          expect(segment).not.toBe('.')
          expect(segment).not.toBe('..')
          expect(segment.split(';')[0]).not.toMatch(/^\.\.?$/)
        }
      }),
      { numRuns: 5_000 },
    )
  })

  it('leaves no route bypass: a path outside a prefix stays outside for any upstream decoding', () => {
    fc.assert(
      fc.property(rawPath, prefix, (raw, routePrefix) => {
        const result = normalizePath(raw)
        if (!result.ok) return
        const matched = pathHasPrefix(result.path, routePrefix)
        // The upstream receives exactly result.path; however many times it decodes, it must
        // agree with the route table on whether the path is under the prefix.
        for (const times of [0, 1, 2]) {
          expect(pathHasPrefix(upstreamView(result.path, times), routePrefix)).toBe(matched)
        }
        // A WHATWG URL parser resolving the forwarded path keeps the upstream's host.
        const url = new URL(result.path, 'http://upstream.internal')
        expect(url.host).toBe('upstream.internal')
        expect(pathHasPrefix(upstreamView(url.pathname, 1), routePrefix)).toBe(matched)
      }),
      { numRuns: 5_000 },
    )
  })

  it('routes exactly as the upstream will read the path: the gateway route table on normalized paths', () => {
    const route = (name: string, prefix: string): RouteConfig => ({
      name,
      match: { prefix, methods: undefined, headers: {} },
      targets: [{ service: name, weight: 1 }],
      sticky: undefined,
      stripPrefix: undefined,
      shadow: undefined,
      idempotency: undefined,
    })
    fc.assert(
      fc.property(rawPath, prefix, (raw, guardedPrefix) => {
        const table = createRouteTable([route('guarded', guardedPrefix), route('rest', '/')])
        const result = normalizePath(raw)
        if (!result.ok) return
        const matched = table.match('GET', result.path, {})?.name === 'guarded'
        for (const times of [0, 1, 2]) {
          expect(pathHasPrefix(upstreamView(result.path, times), guardedPrefix)).toBe(matched)
        }
      }),
      { numRuns: 2_000 },
    )
  })
})
