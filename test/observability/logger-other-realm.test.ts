// Values made in another realm (a vm context, an iframe-like sandbox, a library that runs code
// in one) fail `instanceof` against this realm's constructors: an Error from there, whose
// name, message and stack are not enumerable, was written `{}`, and a Map or Set the same.
import { runInNewContext } from 'node:vm'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'

function logged(fields: Record<string, unknown>): Record<string, unknown> {
  let text = ''
  const output = {
    write(line: string) {
      text += line
    },
  }
  createJsonLogger({ output }).error('failed', fields)
  return JSON.parse(text) as Record<string, unknown>
}

describe('logging values from another realm', () => {
  it('writes an Error from a vm context as a same-realm one is written', () => {
    const error = runInNewContext(`
      const e = new TypeError('connect to postgres://app:s3cret@db failed')
      e.code = 'ECONNREFUSED'
      e.errno = -111
      e.cause = new RangeError('inner')
      e
    `) as Error
    expect(error instanceof Error).toBe(false)
    const line = logged({ error })
    expect(line.error).toMatchObject({
      type: 'TypeError',
      message: 'connect to postgres://app:***@db failed',
      code: 'ECONNREFUSED',
      errno: -111,
      cause: { type: 'RangeError', message: 'inner' },
    })
    expect((line.error as { stack: string }).stack).toContain('TypeError: connect')
    expect(JSON.stringify(line)).not.toContain('s3cret')
  })

  it('writes the errors of an AggregateError from a vm context', () => {
    const error = runInNewContext(
      `new AggregateError([new Error('a'), new Error('b')], 'both failed')`,
    ) as Error
    expect(logged({ error }).error).toMatchObject({
      type: 'AggregateError',
      message: 'both failed',
      errors: [{ message: 'a' }, { message: 'b' }],
    })
  })

  it('writes a Map and a Set from a vm context by their entries', () => {
    const { map, set } = runInNewContext(
      `({ map: new Map([['host', 'db'], ['password', 'pw']]), set: new Set(['a', 'b']) })`,
    ) as { map: unknown; set: unknown }
    expect(logged({ map, set })).toMatchObject({
      map: { host: 'db', password: '[redacted]' },
      set: ['a', 'b'],
    })
  })
})
