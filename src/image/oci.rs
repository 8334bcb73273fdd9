//! OCI images (`oci://ghcr.io/org/image:tag`) on tart hosts: the reference checked to be a
//! plain registry name (`oci_reference`), and the image pulled by the hypervisor pinned to
//! the sha256 digest that `image.checksum` gives (never by its tag: a tag moves), then
//! published as any gold.

use std::fs;
use std::time::Instant;

use crate::image::error::ImageError;
use crate::image::extract::Unpacked;
use crate::image::gold_host::GoldHost;
use crate::image::layout::GoldImage;
use crate::image::oci_reference::OciReference;
use crate::image::pipeline::{self, Job, Staging};
use crate::image::progress::ImagePhase;
use crate::image::spec::ChecksumType;

/// The pull of `reference` by the hypervisor into a staging folder, published as
/// `gold/<digest>/`: the OCI counterpart of `pipeline::run`.
pub(crate) fn run(
    job: &Job,
    reference: &OciReference,
    host: Option<&dyn GoldHost>,
) -> Result<GoldImage, ImageError> {
    let spec = job.spec;
    let unsupported = |reason: String| ImageError::UnsupportedUrl {
        url: spec.url.clone(),
        reason,
    };
    if spec.checksum_type != ChecksumType::Sha256 {
        return Err(unsupported(
            "an oci:// image is pinned by its manifest's sha256 digest: give it as image.checksum with checksum_type sha256".to_owned(),
        ));
    }
    if reference
        .digest
        .as_ref()
        .is_some_and(|d| *d != spec.checksum)
    {
        return Err(unsupported(
            "the URL pins another digest than image.checksum: give one digest, in image.checksum"
                .to_owned(),
        ));
    }
    let host = host.ok_or_else(|| {
        unsupported("oci:// images are pulled by tart, and this server runs no tart".to_owned())
    })?;
    let started = Instant::now();
    let pinned = format!("{}@sha256:{}", reference.repository, spec.checksum);
    job.progress.set_phase(ImagePhase::Downloading);
    crate::info!(image = &spec.checksum; "image pull started: {} as {pinned}", spec.url);
    let result = pull_and_publish(job, reference, host);
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(gold) => crate::info!(
            image = &spec.checksum;
            "image pull finished: {pinned} in {secs:.1} s, gold {}",
            gold.dir.display()
        ),
        Err(e) => crate::warn!(
            image = &spec.checksum, code = e.code();
            "image pull failed: {pinned} after {secs:.1} s: {}: {e}",
            e.code()
        ),
    }
    result
}

fn pull_and_publish(
    job: &Job,
    reference: &OciReference,
    host: &dyn GoldHost,
) -> Result<GoldImage, ImageError> {
    let staging = Staging::create(job.layout.new_staging_dir(&job.spec.checksum))?;
    host.pull_oci(
        &reference.repository,
        &job.spec.checksum,
        &staging.path,
        job.cancel,
    )?;
    if job.cancel.is_cancelled() {
        return Err(ImageError::Cancelled);
    }
    job.progress.set_phase(ImagePhase::Publishing);
    let bytes = fs::read_dir(&staging.path)
        .map_err(|e| ImageError::io(&staging.path, e))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let unpacked = Unpacked {
        vmx: "config.json".into(),
        files: 3,
        bytes,
    };
    pipeline::publish(job, staging, &unpacked).map_err(pipeline::Stop::into_error)
}
