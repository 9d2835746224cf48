import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { OpenPoolConnections } from '../../src/stores/pg-connections.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

describe('OpenPoolConnections', () => {
  it('resolves at once when no connection is open', async () => {
    const connections = new OpenPoolConnections(new EventEmitter())
    await expect(connections.allClosed(new ManualClock(0), 1_000)).resolves.toBe(true)
  })

  it('waits until every connected client is removed', async () => {
    const pool = new EventEmitter()
    const connections = new OpenPoolConnections(pool)
    const a = {}
    const b = {}
    pool.emit('connect', a)
    pool.emit('connect', b)
    pool.emit('remove', a)
    // A client that never connected (a failed connect) is not waited for.
    pool.emit('remove', {})
    let closed: boolean | undefined
    const waiting = connections.allClosed(new ManualClock(0), 1_000).then((all) => {
      closed = all
    })
    await Promise.resolve()
    expect(closed).toBeUndefined()
    expect(connections.size).toBe(1)
    pool.emit('remove', b)
    await waiting
    expect(closed).toBe(true)
  })

  it('gives up after the limit when a socket never closes', async () => {
    const pool = new EventEmitter()
    const connections = new OpenPoolConnections(pool)
    pool.emit('connect', {})
    const clock = new ManualClock(0)
    const waiting = connections.allClosed(clock, 5_000)
    await clock.advance(4_999)
    let closed: boolean | undefined
    void waiting.then((all) => {
      closed = all
    })
    await Promise.resolve()
    expect(closed).toBeUndefined()
    await clock.advance(1)
    expect(await waiting).toBe(false)
  })
})
