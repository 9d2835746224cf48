// A key percent-encoded twice (`pass%2577ord`) is no password to a reader, which decodes once,
// but it is what a layer that encodes an already encoded URL writes for one: a refusal that
// quoted the URL (the proxy's idempotency.url check, parseDatabaseUrl) showed its value.
import { describe, expect, it } from 'vitest'
import { hasQueryKey, maskQueryValues } from '../../src/core/query-keys.js'

const isPassword = (name: string): boolean => name.toLowerCase() === 'password'
const mask = (text: string): string => maskQueryValues(text, isPassword, /[&#]/g)

describe('query keys encoded more than once', () => {
  it.each([
    ['postgres://db/app?pass%77ord=HUNTER2', 'postgres://db/app?pass%77ord=***'],
    ['postgres://db/app?pass%2577ord=HUNTER2', 'postgres://db/app?pass%2577ord=***'],
    [
      'postgres://db/app?x=1&%2570ass%2577ord=HUNTER2&y=2',
      'postgres://db/app?x=1&%2570ass%2577ord=***&y=2',
    ],
    ['postgres://db/app?pass%252577ord=HUNTER2', 'postgres://db/app?pass%252577ord=***'],
  ])('masks the value of %s', (text, expected) => {
    expect(mask(text)).toBe(expected)
  })

  it('masks a key still encoded after the rounds it decodes, whatever it names', () => {
    const deep = 'postgres://db/app?pass%25252525252577ord=HUNTER2&x%25252525252541=1&y%2541=2'
    expect(mask(deep)).toBe(
      'postgres://db/app?pass%25252525252577ord=***&x%25252525252541=***&y%2541=2',
    )
  })

  it('leaves other keys encoded twice as they are', () => {
    const text = 'postgres://db/app?application%255Fname=pass%2577ord&ssl%256dode=require'
    expect(mask(text)).toBe(text)
  })

  it('still says a reader takes no password from a key encoded twice', () => {
    // A reader decodes once: `pass%2577ord` sets the parameter `pass%77ord`.
    expect(hasQueryKey('postgres://db/app?pass%2577ord=x', isPassword)).toBe(false)
    expect(hasQueryKey('postgres://db/app?pass%77ord=x', isPassword)).toBe(true)
  })
})
