// The annotated hex's engine side: the structures in one host cluster, field by field, and the
// reading of the field under one byte (core/analysis/annotate.ts), for an image opened whole or
// only as far as its header.
import { annotateCluster, byteMap, landmarks, readField, type AnnotateSource } from '../core/analysis/annotate.ts';
import * as Comlink from 'comlink';
import { FIELD_ROLES } from '../core/format/layouts.ts';
import { parseHeader, type Qcow2Header } from '../core/format/header.ts';
import type { ImageStore } from '../core/io/store.ts';
import type { ClusterAnnotationDTO, FieldReadingDTO } from './api.ts';
import type { EngineImage } from './engine-adapter.ts';

async function sourceOf(store: ImageStore, engine: EngineImage): Promise<AnnotateSource> {
  const img = engine.image;
  const clusterSize = engine.header().clusterSize;
  let header: Qcow2Header | null = img?.header ?? null;
  if (!header) {
    try {
      header = parseHeader(await store.read(0, clusterSize));
    } catch {
      header = null; // the fixed fields as stored are still laid out
    }
  }
  return { read: (at, length) => store.read(at, length), clusterSize, header, image: img };
}

export async function annotationOf(store: ImageStore, engine: EngineImage, clusterStart: number): Promise<ClusterAnnotationDTO> {
  const src = await sourceOf(store, engine);
  const regions = await annotateCluster(src, clusterStart);
  const bytes = byteMap(regions, clusterStart, src.clusterSize);
  return Comlink.transfer({ clusterStart, regions, landmarks: landmarks(engine.image), bytes, roles: [...FIELD_ROLES] }, [bytes.buffer]);
}

export async function fieldReadingOf(store: ImageStore, engine: EngineImage, clusterStart: number, hostOffset: number): Promise<FieldReadingDTO | null> {
  return readField(await sourceOf(store, engine), clusterStart, hostOffset);
}
