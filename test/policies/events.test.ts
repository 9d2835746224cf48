import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { EventSource } from '../../src/policies/events.js'

describe('EventSource', () => {
  it('refuses a listener that is not a function when it is added, not at the first event', () => {
    const source = new EventSource<string>()
    for (const bad of [undefined, null, 'listener', {}]) {
      expect(() => source.on(bad as never)).toThrow(InvalidOptionError)
    }
    expect(source.hasListeners).toBe(false)
  })

  it('calls every listener; one that throws does not stop the others; off() removes it', () => {
    const source = new EventSource<number>()
    const seen: number[] = []
    const uncaught: unknown[] = []
    const original = globalThis.queueMicrotask
    globalThis.queueMicrotask = (job) => {
      try {
        job()
      } catch (error) {
        uncaught.push(error)
      }
    }
    try {
      source.on(() => {
        throw new Error('listener bug')
      })
      const off = source.on((n) => seen.push(n))
      source.emit(1)
      off()
      source.emit(2)
    } finally {
      globalThis.queueMicrotask = original
    }
    expect(seen).toEqual([1])
    expect(uncaught).toHaveLength(2)
  })

  it('off() undoes its own on() only, once, when the same listener was added twice', () => {
    // Two parts of an app may subscribe one shared function (a logger); one of them leaving
    // used to unsubscribe both, and the other silently stopped hearing events.
    const source = new EventSource<number>()
    const seen: number[] = []
    const listener = (n: number) => seen.push(n)
    const off = source.on(listener)
    source.on(listener)
    source.emit(1)
    off()
    source.emit(2)
    off()
    source.emit(3)
    expect(seen).toEqual([1, 1, 2, 3])
    expect(source.hasListeners).toBe(true)
  })
})
