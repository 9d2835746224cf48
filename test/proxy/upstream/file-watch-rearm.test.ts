// watchFileContent when the folder watch itself fails (an 'error' event, the folder removed and
// created again, a folder that does not exist yet): the watch is armed again after a delay, and
// the file is read once it is, so a change made while nothing watched is still reported. Also
// the debounce and "unchanged" hooks the CLI's config watch uses. Time is a ManualClock.

import { EventEmitter } from 'node:events'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { type FileWatchOptions, watchFileContent } from '../../../src/proxy/upstream/file-watch.js'
import { ManualClock } from '../../../src/testing/index.js'
import { eventually } from './helpers.js'

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup()
})

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-rearm-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A folder watch the test drives: events, errors, and whether it was closed. */
class FakeFolderWatch extends EventEmitter {
  closed = false
  constructor(
    readonly folder: string,
    readonly listener: (event: string, filename: string | null) => void,
  ) {
    super()
  }
  close(): void {
    this.closed = true
  }
}

function watchAll(path: string, initial: string | undefined, options: FileWatchOptions = {}) {
  const seen: string[] = []
  const errors: unknown[] = []
  const watch = watchFileContent(
    path,
    initial === undefined ? undefined : Buffer.from(initial),
    (content) => seen.push(content.toString('utf8')),
    (error) => errors.push(error),
    options,
  )
  cleanups.push(() => watch.close())
  return { seen, errors, watch }
}

describe('watchFileContent re-arms a failed folder watch', () => {
  it('watches again after an error event, and reports a change made meanwhile', async () => {
    const dir = tempDir()
    const path = join(dir, 'token')
    writeFileSync(path, 'one')
    const clock = new ManualClock(0)
    const watches: FakeFolderWatch[] = []
    let rewatched = 0
    const { seen, errors } = watchAll(path, 'one', {
      clock,
      rewatchDelayMs: 1_000,
      onRewatched: () => rewatched++,
      watchFolder: (folder, listener) => {
        const w = new FakeFolderWatch(folder, listener)
        watches.push(w)
        return w
      },
    })
    expect(watches.map((w) => w.folder)).toEqual([dir])
    const failure = new Error('watch failed')
    watches[0]?.emit('error', failure)
    expect(errors).toEqual([failure])
    expect(watches[0]?.closed).toBe(true)
    writeFileSync(path, 'two')
    await clock.advance(999)
    expect(watches).toHaveLength(1)
    await clock.advance(1)
    expect(watches).toHaveLength(2)
    expect(rewatched).toBe(1)
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(['two'])
    // The new watch is the one that reports changes from now on.
    writeFileSync(path, 'three')
    watches[1]?.listener('change', 'token')
    await eventually(() => seen.length === 2)
    expect(seen).toEqual(['two', 'three'])
    expect(errors).toEqual([failure])
  })

  it('watches again when the folder is removed and created again', async () => {
    const parent = tempDir()
    const dir = join(parent, 'config')
    mkdirSync(dir)
    const path = join(dir, 'token')
    writeFileSync(path, 'one')
    const clock = new ManualClock(0)
    let rewatched = 0
    const { seen } = watchAll(path, 'one', { clock, onRewatched: () => rewatched++ })
    rmSync(dir, { recursive: true })
    // The watch saw its folder go and waits to arm again.
    await eventually(() => clock.pendingTimers === 1)
    mkdirSync(dir)
    writeFileSync(path, 'two')
    await clock.advance(clock.nextTimerAt() ?? 0)
    expect(rewatched).toBe(1)
    await eventually(() => seen.length === 1)
    writeFileSync(path, 'three')
    await eventually(() => seen.length === 2)
    expect(seen).toEqual(['two', 'three'])
  })

  it('keeps trying while the folder does not exist, reporting the failure once', async () => {
    const parent = tempDir()
    const dir = join(parent, 'later')
    const path = join(dir, 'token')
    const clock = new ManualClock(0)
    const { seen, errors } = watchAll(path, undefined, { clock, rewatchDelayMs: 500 })
    expect(errors).toHaveLength(1)
    expect((errors[0] as { code?: string }).code).toBe('ENOENT')
    await clock.advance(500)
    await clock.advance(500)
    expect(errors).toHaveLength(1)
    mkdirSync(dir)
    writeFileSync(path, 'one')
    await clock.advance(500)
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(['one'])
    expect(clock.pendingTimers).toBe(0)
  })

  it('stops trying once closed', async () => {
    const clock = new ManualClock(0)
    const { watch } = watchAll(join(tempDir(), 'missing', 'token'), undefined, { clock })
    expect(clock.pendingTimers).toBe(1)
    watch.close()
    expect(clock.pendingTimers).toBe(0)
  })
})

describe('watchFileContent options', () => {
  it('reads once after the last event of a burst when debounced, and says when nothing changed', async () => {
    const dir = tempDir()
    const path = join(dir, 'config.yaml')
    writeFileSync(path, 'one')
    const clock = new ManualClock(0)
    let fire: (filename: string | null) => void = () => {}
    let unchanged = 0
    const { seen } = watchAll(path, 'one', {
      clock,
      debounceMs: 250,
      onUnchanged: () => unchanged++,
      watchFolder: (folder, listener) => {
        fire = (filename) => listener('rename', filename)
        return new FakeFolderWatch(folder, listener)
      },
    })
    fire('config.yaml')
    await clock.advance(200)
    fire('config.yaml')
    await clock.advance(200)
    expect(clock.pendingTimers).toBe(1)
    await clock.advance(50)
    await eventually(() => unchanged === 1)
    expect(seen).toEqual([])
    writeFileSync(path, 'two')
    fire('config.yaml')
    fire('other.txt')
    await clock.advance(250)
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(['two'])
    expect(unchanged).toBe(1)
  })

  it('reads at once when asked, so a change between the caller’s read and the watch is seen', async () => {
    const dir = tempDir()
    const path = join(dir, 'config.yaml')
    writeFileSync(path, 'two')
    const { seen } = watchAll(path, 'one', { readAtStart: true })
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(['two'])
  })

  it('refuses bad options when called', () => {
    expect(() =>
      watchFileContent(
        'x',
        undefined,
        () => {},
        () => {},
        { debounceMs: -1 },
      ),
    ).toThrow(expect.objectContaining({ code: 'INVALID_OPTION', option: 'debounceMs' }))
    expect(() =>
      watchFileContent(
        'x',
        undefined,
        () => {},
        () => {},
        { rewatchDelayMs: 0 },
      ),
    ).toThrow(expect.objectContaining({ code: 'INVALID_OPTION', option: 'rewatchDelayMs' }))
  })
})
