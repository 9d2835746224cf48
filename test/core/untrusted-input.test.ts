// What arrives from the network is parsed without surprises. Random strings, header maps and
// JSON bodies go into every parser of untrusted input: Retry-After, the deadline headers,
// Idempotency-Key, webhook signatures and the proxy admin API's target lists. Each must return
// a well-formed value or refuse with its own documented error, never throw a TypeError or
// RangeError and never return NaN, a negative wait or an infinite one.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { verifyWebhookSignature } from '../../src/brokers/index.js'
import { IdempotencyKeyInvalidError } from '../../src/idempotency/index.js'
import { parseIdempotencyKey } from '../../src/idempotency/key.js'
import {
  BreakwaterError,
  DEADLINE_HEADER,
  deadlineFromHeaders,
  GRPC_TIMEOUT_HEADER,
  parseGrpcTimeout,
  parseRetryAfter,
} from '../../src/index.js'
import { parseTargets } from '../../src/proxy/admin/server.js'

/** Header-ish text: digits, units, signs, spaces, dates, unicode and control characters. */
const headerText = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.stringMatching(/^[ \t]*-?[0-9]{0,30}(\.[0-9]{0,4})?[HMSmun]?[ \t]*$/),
  fc.constantFrom(
    '9'.repeat(400),
    '1e309',
    'Infinity',
    'NaN',
    '-0',
    'Wed, 21 Oct 2015 07:28:00 GMT',
    'Fri, 31 Dec 9999 23:59:59 GMT',
    '99999999H',
    '0n',
    '"quoted"',
    '"',
    '',
  ),
)

/** A finite wait in milliseconds, or nothing. */
function expectWait(value: number | undefined): void {
  if (value === undefined) return
  expect(Number.isFinite(value), `wait ${value}`).toBe(true)
  expect(value).toBeGreaterThanOrEqual(0)
}

describe('parsers of untrusted input under random input', () => {
  it('parseRetryAfter returns nothing or a finite wait >= 0', () => {
    fc.assert(
      fc.property(headerText, fc.integer({ min: 0, max: 4_102_444_800_000 }), (value, now) => {
        expectWait(parseRetryAfter(value, now))
      }),
      { numRuns: 2_000 },
    )
  })

  it('parseGrpcTimeout returns nothing or a finite timeout >= 0', () => {
    fc.assert(
      fc.property(headerText, (value) => {
        expectWait(parseGrpcTimeout(value))
      }),
      { numRuns: 2_000 },
    )
  })

  it('deadlineFromHeaders returns nothing or a finite budget, from any header values', () => {
    const value = fc.oneof(headerText, fc.array(headerText, { maxLength: 3 }), fc.anything())
    fc.assert(
      fc.property(
        fc.record(
          {
            [DEADLINE_HEADER]: value,
            [GRPC_TIMEOUT_HEADER]: value,
            'X-Breakwater-Deadline-Ms': value,
          },
          { requiredKeys: [] },
        ),
        (headers) => {
          const ms = deadlineFromHeaders(headers as never)
          // A spent budget arrives as a negative number of milliseconds left; never NaN.
          if (ms !== undefined) expect(Number.isFinite(ms), `budget ${ms}`).toBe(true)
        },
      ),
      { numRuns: 2_000 },
    )
  })

  it('parseIdempotencyKey returns a key or throws IdempotencyKeyInvalidError', () => {
    fc.assert(
      fc.property(headerText, (value) => {
        try {
          const key = parseIdempotencyKey(value)
          expect(typeof key).toBe('string')
          expect(key.length).toBeGreaterThan(0)
        } catch (error) {
          expect(error).toBeInstanceOf(IdempotencyKeyInvalidError)
        }
      }),
      { numRuns: 2_000 },
    )
  })

  it('verifyWebhookSignature answers ok: false for any forged header and body, never throws', () => {
    const header = fc.oneof(
      headerText,
      fc.array(headerText, { maxLength: 3 }),
      fc.constantFrom(null, undefined),
      fc.tuple(fc.integer(), fc.string({ maxLength: 70 })).map(([t, sig]) => `t=${t},v1=${sig}`),
      fc.stringMatching(/^t=[0-9]{1,12},v1=[0-9a-f]{64}(,v1=[0-9a-f]{0,64})?$/),
    )
    const body = fc.oneof(fc.string({ maxLength: 60 }), fc.uint8Array({ maxLength: 60 }))
    fc.assert(
      fc.property(header, body, (h, b) => {
        const verification = verifyWebhookSignature('whsec-fuzz-0123456789abcdef', h as never, b)
        expect(verification.ok).toBe(false)
      }),
      { numRuns: 2_000 },
    )
  })

  it('the admin API reads any JSON body as targets or refuses it with a 400 naming the field', () => {
    const target = fc.record(
      {
        service: fc.oneof(fc.constantFrom('legacy', 'new'), fc.jsonValue({ maxDepth: 1 })),
        weight: fc.oneof(
          fc.integer({ min: -5, max: 200 }),
          fc.double(),
          fc.jsonValue({ maxDepth: 1 }),
        ),
      },
      { requiredKeys: [] },
    )
    const body = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }),
      fc.record({ targets: fc.oneof(fc.array(target, { maxLength: 3 }), fc.jsonValue()) }),
      fc.array(target, { maxLength: 3 }),
    )
    fc.assert(
      fc.property(body, (value) => {
        try {
          const targets = parseTargets(value)
          for (const t of targets) {
            expect(typeof t.service).toBe('string')
            expect(Number.isFinite(t.weight)).toBe(true)
          }
        } catch (error) {
          if (BreakwaterError.is(error)) return
          const problem = error as { status?: unknown; code?: unknown; message?: unknown }
          expect(problem.status, String(error)).toBe(400)
          expect(typeof problem.code).toBe('string')
          expect(String(problem.message)).toMatch(/expected/)
        }
      }),
      { numRuns: 2_000 },
    )
  })
})
