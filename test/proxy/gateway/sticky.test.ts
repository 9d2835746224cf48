import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  readCookie,
  stickyChooser,
  stickyUnit,
  stickyValueOf,
} from '../../../src/proxy/inbound/sticky.js'

describe('sticky hash', () => {
  it('draws (value, service) units from the hash of value, 0xff, service (independent Python values)', () => {
    // python3: x = 0x811c9dc5; for b in v.encode() + b'\xff' + service.encode(): x ^= b;
    // x = x * 0x01000193 & 0xffffffff; then fmix32 (>>16, *0x85ebca6b, >>13, *0xc2b2ae35, >>16);
    // then (x + 0.5) / 2**32.
    // Pinned: a change would reassign sticky users at the next deploy.
    expect(stickyUnit('user-42', 'legacy')).toBe(0.370312882703729)
    expect(stickyUnit('user-42', 'new')).toBe(0.6269933796720579)
    expect(stickyUnit('', 'a')).toBe(0.5181324350414798)
    expect(stickyUnit('é', 'svc')).toBe(0.7214438373921439)
  })

  it('gives the same units and choices in another process', () => {
    const values = ['user-42', 'alice@example.com', '🙂', 'x'.repeat(500)]
    const targets = [
      { service: 'a', weight: 1 },
      { service: 'b', weight: 2 },
      { service: 'c', weight: 3 },
    ]
    const choose = stickyChooser(targets)
    const expected = values.map((v) => [stickyUnit(v, 'a'), stickyUnit(v, 'b'), choose?.(v)])
    const script = `import { stickyChooser, stickyUnit } from './src/proxy/inbound/sticky.ts'
      const targets = ${JSON.stringify(targets)}
      const choose = stickyChooser(targets)
      console.log(JSON.stringify(${JSON.stringify(values)}.map((v) => [stickyUnit(v, 'a'), stickyUnit(v, 'b'), choose(v)])))`
    const out = execFileSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      {
        cwd: process.cwd(),
        encoding: 'utf8',
      },
    )
    expect(JSON.parse(out)).toEqual(expected)
  })

  it('maps every (value, service) into (0, 1), where -ln is finite and above 0', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'binary' }),
        fc.string({ unit: 'binary' }),
        (value, service) => {
          const u = stickyUnit(value, service)
          expect(u).toBeGreaterThan(0)
          expect(u).toBeLessThan(1)
          expect(-Math.log(u)).toBeGreaterThan(0)
          expect(stickyUnit(value, service)).toBe(u)
        },
      ),
    )
  })

  it('spreads sequential ids evenly over ten bands, for each of two similar services', () => {
    for (const service of ['s1', 's2']) {
      const bands = new Array<number>(10).fill(0)
      for (let i = 0; i < 10_000; i++) bands[Math.floor(stickyUnit(`u-${i}`, service) * 10)]! += 1
      for (const n of bands) expect(Math.abs(n - 1000)).toBeLessThan(150)
    }
  })

  it('never chooses a zero-weight target, and has no choice without a weight above 0', () => {
    const choose = stickyChooser([
      { service: 'off', weight: 0 },
      { service: 'on', weight: 1 },
    ])
    for (let i = 0; i < 1000; i++) expect(choose?.(`u-${i}`)).toBe('on')
    expect(stickyChooser([{ service: 'off', weight: 0 }])).toBeUndefined()
  })
})

describe('sticky value', () => {
  it('reads cookies without a parser dependency', () => {
    expect(readCookie('a=1; uid=abc; b=2', 'uid')).toBe('abc')
    expect(readCookie('uid="q v"', 'uid')).toBe('q v')
    expect(readCookie('xuid=1; uid=2', 'uid')).toBe('2')
    expect(readCookie('uid=1; uid=2', 'uid')).toBe('1')
    expect(readCookie(['a=1', 'uid=%41'], 'uid')).toBe('%41')
    expect(readCookie('a=1;uid=z=z', 'uid')).toBe('z=z')
    expect(readCookie('a=1; flag; b=2', 'flag')).toBeUndefined()
    expect(readCookie(undefined, 'uid')).toBeUndefined()
    expect(readCookie('', 'uid')).toBeUndefined()
  })

  it('takes the header or cookie a route names; empty counts as absent', () => {
    const headers = { 'x-user-id': 'u-7', cookie: 'session=s; uid=c-9', 'x-empty': '' }
    expect(stickyValueOf(undefined, headers)).toBeUndefined()
    expect(stickyValueOf({ header: 'X-User-Id' }, headers)).toBe('u-7')
    expect(stickyValueOf({ header: 'x-empty' }, headers)).toBeUndefined()
    expect(stickyValueOf({ header: 'x-missing' }, headers)).toBeUndefined()
    expect(stickyValueOf({ cookie: 'uid' }, headers)).toBe('c-9')
    expect(stickyValueOf({ header: 'x-multi' }, { 'x-multi': ['a', 'b'] })).toBe('a, b')
  })
})
