// A field's name is written as well as its value: a credential held in a name (a Map of pools
// keyed by their connection URL, an object of clients keyed by broker URL) must be masked as
// one held in a value is.
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'

function capture(): { raw: () => string; write(t: string): void } {
  let text = ''
  return {
    raw: () => text,
    write(t: string) {
      text += t
    },
  }
}

describe('JSON logger: credentials in field names', () => {
  it('masks them in Map keys, object keys and top-level field names', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    const pools = new Map([['postgres://app:s3cr3t-pw@db:5432/app', { open: 2 }]])
    log.info('pools', {
      pools,
      brokers: { 'amqp://guest:gu3st-pw@rabbit:5672/': 'up' },
      'redis://:r3dis-pw@cache:6379': 'cache',
    })
    const raw = out.raw()
    for (const secret of ['s3cr3t-pw', 'gu3st-pw', 'r3dis-pw']) expect(raw).not.toContain(secret)
    const line = JSON.parse(raw) as Record<string, Record<string, unknown>>
    expect(line.pools).toEqual({ 'postgres://app:***@db:5432/app': { open: 2 } })
    expect(line.brokers).toEqual({ 'amqp://guest:***@rabbit:5672/': 'up' })
    expect(line['redis://:***@cache:6379']).toBe('cache')
  })

  it('masks them in the fields bound by the options and by child()', () => {
    const out = capture()
    const log = createJsonLogger({
      output: out,
      fields: { 'nats://t0ken-one@nats:4222': 1 },
    }).child({ 'nats://t0ken-two@nats:4222': 2 })
    log.info('x')
    expect(out.raw()).not.toContain('t0ken-one')
    expect(out.raw()).not.toContain('t0ken-two')
  })
})

describe('JSON logger: errors with odd name, message or stack', () => {
  it('writes the rest of the line, and masks secrets inside those odd values', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    const numbered = Object.assign(new Error('x'), { message: 42 })
    const big = Object.assign(new Error('y'), { name: 10n })
    const named = Object.assign(new Error('z'), { name: { password: 'hunter2' } })
    const stacked = Object.assign(new Error('w'), { stack: ['postgres://a:s3cr3t@db'] })
    log.error('failed', { numbered, big, named, stacked, order: 'o-1' })
    const raw = out.raw()
    expect(raw).not.toContain('hunter2')
    expect(raw).not.toContain('s3cr3t')
    const line = JSON.parse(raw) as Record<string, Record<string, unknown>>
    expect(line.order).toBe('o-1')
    expect(line.numbered).toMatchObject({ type: 'Error', message: 42 })
    expect(line.big).toMatchObject({ type: '10', message: 'y' })
    expect(line.named).toMatchObject({ type: { password: '[redacted]' }, message: 'z' })
    expect(line.stacked).toMatchObject({ message: 'w', stack: ['postgres://a:***@db'] })
  })
})

describe('JSON logger: a field named __proto__', () => {
  it('is written like any other field, at the top, nested and as a Map key', () => {
    const out = capture()
    const log = createJsonLogger({ output: out })
    // JSON.parse makes __proto__ an own property, as in a logged request body.
    const body = JSON.parse('{"__proto__": {"x": 1}, "y": 2}') as Record<string, unknown>
    log.info('top', body)
    log.info('nested', { body })
    log.info('map', { m: new Map([['__proto__', 1]]) })
    const [top, nested, map] = out
      .raw()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(Object.hasOwn(top!, '__proto__')).toBe(true)
    expect(top!.y).toBe(2)
    expect(JSON.stringify(nested!.body)).toBe('{"__proto__":{"x":1},"y":2}')
    expect(JSON.stringify(map!.m)).toBe('{"__proto__":1}')
  })
})
