import { type FSWatcher, watch } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { basename, dirname } from 'node:path'

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
 * Watches `path`. `initial` is the content already read and applied at start (an unchanged
 * file is not reported again); `onError` gets read and watch failures.
 */
export function watchFileContent(
  path: string,
  initial: Buffer | undefined,
  onChange: (content: Buffer) => void,
  onError: (error: unknown) => void,
): FileWatch {
  const name = basename(path)
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
        }
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
  let watcher: FSWatcher | undefined
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, filename) => {
      // A Kubernetes volume update names only `..` entries; an unchanged file is not reported.
      if (isWatchedFileEvent(filename, name)) read()
    })
    watcher.on('error', onError)
  } catch (error) {
    onError(error)
  }
  return {
    close() {
      closed = true
      watcher?.close()
    },
  }
}
