import { execFileSync } from 'node:child_process'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  readCookie,
  stickyHash,
  stickyPoint,
  stickyValueOf,
} from '../../../src/proxy/inbound/sticky.js'

describe('sticky hash', () => {
  it('is FNV-1a 32 with the murmur3 finalizer (values from an independent Python implementation)', () => {
    // python3: x = 0x811c9dc5; for b in s.encode(): x ^= b; x = x * 0x01000193 & 0xffffffff
    // then fmix32 (>>16, *0x85ebca6b, >>13, *0xc2b2ae35, >>16). Pinned so that a change of the
    // hash (which would move every sticky user at the next deploy) fails here.
    expect(stickyHash('')).toBe(2872998923)
    expect(stickyHash('user-42')).toBe(2083131798)
    expect(stickyHash('u-1')).toBe(196499737)
    expect(stickyHash('u-2')).toBe(2814064991)
    expect(stickyHash('é')).toBe(2387039943)
  })

  it('gives the same point in another process', () => {
    const values = ['user-42', 'alice@example.com', '🙂', 'x'.repeat(500)]
    const script = `import { stickyPoint } from './src/proxy/inbound/sticky.ts'
      console.log(JSON.stringify(${JSON.stringify(values)}.map(stickyPoint)))`
    const out = execFileSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      {
        cwd: process.cwd(),
        encoding: 'utf8',
      },
    )
    expect(JSON.parse(out)).toEqual(values.map(stickyPoint))
  })

  it('maps every value into [0, 1)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), (value) => {
        const p = stickyPoint(value)
        expect(p).toBeGreaterThanOrEqual(0)
        expect(p).toBeLessThan(1)
        expect(stickyPoint(value)).toBe(p)
      }),
    )
  })

  it('spreads sequential ids evenly over ten bands', () => {
    const bands = new Array<number>(10).fill(0)
    for (let i = 0; i < 10_000; i++) bands[Math.floor(stickyPoint(`u-${i}`) * 10)]! += 1
    for (const n of bands) expect(Math.abs(n - 1000)).toBeLessThan(150)
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
