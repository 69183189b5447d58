/**
 * On-disk layout of the image and layer stores (all read-only once written; written aside, then
 * renamed into place):
 *
 *   <imagesDir>/<digest>/rootfs/      a base image root filesystem
 *   <imagesDir>/<digest>/meta.json    { digest, source, created_at, size_bytes }
 *   <imagesDir>/default               text file: the digest of the default base image
 *   <layersDir>/<digest>/             an environment layer (a folder overlaid on the rootfs)
 *   <runnersDir>/<digest>/            a runner layer: node, runner.mjs, version.json
 *
 * Digests are "sha256-<hex>" over a canonical walk of the tree (sorted paths; type, mode, uid,
 * gid, size, content or link target), so identical trees get identical digests.
 */
export const DEFAULT_IMAGE_POINTER = "default";
