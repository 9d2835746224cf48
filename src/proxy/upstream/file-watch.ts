import { watch } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { type Clock, maxTimerDelayMs, type TimerHandle } from '../../core/clock.js'
import { checkClock, checkFunction, checkInteger, checkObject } from '../../core/validate.js'

/**
 * Calls `onChange` with a file's new content whenever it changes, until `close()`. Watches the
 * file's folder rather than the file, so a file replaced by rename (how editors and `mv` update
 * files) keeps being seen, as does a Kubernetes secret or ConfigMap volume update (the `..data`
 * symlink swapped, the file's own name untouched). Reads are serialized: an event that arrives
 * while a read runs causes one more read after it, so the last content always wins.
 */
export interface FileWatch {
  /** Stops watching; a read under way is dropped. */
  close(): void
}

/**
 * Whether a change event of a watched folder (`filename` as `fs.watch` reports it) may have
 * changed one of the files named `names` in it, so the caller should read them again. Besides
 * the names themselves (and `null`: the platform did not say), names starting with `..` count:
 * a Kubernetes secret or ConfigMap volume never touches the file's own name, as the file is a
 * symlink through `..data`, which the kubelet swaps by renaming `..data_tmp` over it, so its
 * events name `..data`, `..data_tmp` or the new `..<timestamp>` folder. Nothing else uses such
 * names, so other files in the folder still cause no reload.
 */
export function isWatchedFileEvent(
  filename: string | null,
  names: string | ReadonlySet<string>,
): boolean {
  if (filename === null || filename.startsWith('..')) return true
  return typeof names === 'string' ? filename === names : names.has(filename)
}

/**
 * A folder watch as {@link watchFileContent} uses it: `fs.watch` of the folder, or a test's
 * stand-in (see {@link FileWatchOptions.watchFolder}).
 */
export interface FolderWatch {
  /** Failures of the watch after it started (Node's `'error'` event). */
  on(event: 'error', listener: (error: Error) => void): unknown
  /** Stops it. */
  close(): void
}

/** Options of {@link watchFileContent}; everything has a default. */
export interface FileWatchOptions {
  /**
   * Quiet time after the last event before the file is read (ms), so an editor's several writes
   * become one read. 0 reads at each event (reads are serialized either way).
   * @default 0
   */
  readonly debounceMs?: number
  /**
   * Time before a failed folder watch is armed again (ms): after an `'error'` event, after the
   * folder itself was removed or renamed, or when the folder does not exist (yet).
   * @default 1000
   */
  readonly rewatchDelayMs?: number
  /**
   * Read the file once as soon as the watch is armed, so a change made between the caller's
   * own read (`initial`) and the watch is reported too.
   * @default false
   */
  readonly readAtStart?: boolean
  /** Called when a read found the content as it was (an event that changed nothing). */
  readonly onUnchanged?: () => void
  /** Called when a watch that had failed is armed again (the file is then read once). */
  readonly onRewatched?: () => void
  /**
   * Times the debounce and the re-arm delay.
   * @default systemClock
   */
  readonly clock?: Clock
  /**
   * Starts watching a folder; `listener` gets each event with the entry it names.
   * @default fs.watch(folder, { persistent: false }, listener)
   */
  readonly watchFolder?: (
    folder: string,
    listener: (event: string, filename: string | null) => void,
  ) => FolderWatch
}

const defaultWatchFolder = (
  folder: string,
  listener: (event: string, filename: string | null) => void,
): FolderWatch => watch(folder, { persistent: false }, listener)

/**
 * Watches `path`. `initial` is the content already read and applied at start (an unchanged
 * file is not reported again); `onError` gets read and watch failures. A folder watch that
 * fails is armed again after `rewatchDelayMs` (a failure that repeats is reported once), and
 * the file is read then, so a change made while nothing watched is not lost. Throws
 * InvalidOptionError (code `INVALID_OPTION`) for a bad option.
 */
export function watchFileContent(
  path: string,
  initial: Buffer | undefined,
  onChange: (content: Buffer) => void,
  onError: (error: unknown) => void,
  options: FileWatchOptions = {},
): FileWatch {
  checkObject('options', options)
  const debounceMs = checkInteger('debounceMs', options.debounceMs ?? 0, 0, maxTimerDelayMs)
  const rewatchDelayMs = checkInteger(
    'rewatchDelayMs',
    options.rewatchDelayMs ?? 1_000,
    1,
    maxTimerDelayMs,
  )
  const clock = checkClock('clock', options.clock)
  const watchFolder =
    options.watchFolder === undefined
      ? defaultWatchFolder
      : checkFunction<typeof defaultWatchFolder>('watchFolder', options.watchFolder)
  const { onUnchanged, onRewatched } = options
  const name = basename(path)
  const folder = dirname(path)
  const folderName = basename(folder)
  let last = initial
  let reading = false
  let again = false
  let closed = false
  const read = (): void => {
    if (closed) return
    if (reading) {
      again = true
      return
    }
    reading = true
    readFile(path).then(
      (content) => {
        reading = false
        if (closed) return
        if (last === undefined || !last.equals(content)) {
          last = content
          onChange(content)
        } else onUnchanged?.()
        if (again) {
          again = false
          read()
        }
      },
      (error: unknown) => {
        reading = false
        if (closed) return
        // A missing file during a rename-replace is normal; the next event reads it again.
        if ((error as { code?: unknown }).code !== 'ENOENT') onError(error)
        if (again) {
          again = false
          read()
        }
      },
    )
  }
  let debounce: TimerHandle | undefined
  const changed = (): void => {
    if (debounceMs === 0) {
      read()
      return
    }
    clock.clearTimeout(debounce)
    debounce = clock.setTimeout(() => {
      debounce = undefined
      read()
    }, debounceMs)
  }

  let watcher: FolderWatch | undefined
  let rewatch: TimerHandle | undefined
  // Whether the current failure was reported: a folder that stays missing is reported once,
  // not at every try.
  let failing = false
  const failed = (error: unknown): void => {
    watcher?.close()
    watcher = undefined
    if (closed || rewatch !== undefined) return
    if (!failing) onError(error)
    failing = true
    rewatch = clock.setTimeout(() => {
      rewatch = undefined
      arm()
    }, rewatchDelayMs)
  }
  const arm = (): void => {
    if (closed) return
    const wasFailing = failing
    let armed: FolderWatch
    try {
      armed = watchFolder(folder, (event, filename) => {
        if (armed !== watcher) return
        // The folder itself removed or renamed (Linux names it in a 'rename' event, then goes
        // quiet): events of a folder created again in its place would never come. Arming
        // again costs a read at worst.
        if (event === 'rename' && filename === folderName && folderName !== name) {
          failed(
            Object.assign(new Error(`the watched folder ${folder} was removed or renamed`), {
              code: 'ENOENT',
            }),
          )
          return
        }
        // A Kubernetes volume update names only `..` entries; an unchanged file is not reported.
        if (isWatchedFileEvent(filename, name)) changed()
      })
    } catch (error) {
      failed(error)
      return
    }
    watcher = armed
    armed.on('error', (error) => {
      if (armed === watcher) failed(error)
    })
    failing = false
    if (wasFailing) {
      onRewatched?.()
      // Whatever happened while nothing watched.
      read()
    }
  }
  arm()
  if (options.readAtStart === true) read()
  return {
    close() {
      closed = true
      watcher?.close()
      watcher = undefined
      clock.clearTimeout(debounce)
      clock.clearTimeout(rewatch)
    },
  }
}
